"""Settings: staff accounts and roles. Supervisors read the list; admins add people, change
their details, role, WhatsApp, shift, password and settings grant, and deactivate them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user, login_user
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from .. import accounts, get_session
from ..accounts import AccountError
from ..db import utcnow
from ..models import ROLES, BusinessCalendar, User
from .roles import admin_required, settings_reader_required

bp = Blueprint("staff", __name__)


def _form(name: str) -> str:
    return request.form.get(name, "")


def _details() -> dict[str, Any]:
    """The account fields of the posted form, as accounts.add_user/update_user take them."""
    return {
        "name": _form("name"),
        "email": _form("email"),
        "role": _form("role"),
        "whatsapp": _form("whatsapp").strip() or None,
        "shift_calendar": _form("shift_calendar") or None,
        "can_edit_settings": _form("can_edit_settings") == "yes",
    }


def _calendars() -> list[BusinessCalendar]:
    return list(get_session().scalars(select(BusinessCalendar).order_by(BusinessCalendar.name)))


def _user(user_id: int) -> User:
    user = get_session().get(User, user_id)
    if user is None:
        abort(404, f"there is no staff account #{user_id}")
    return user


def _me() -> User:
    me: User = current_user._get_current_object()
    return me


def _change(
    do: Callable[[], str], refused: Callable[[str], ResponseReturnValue], back: str
) -> ResponseReturnValue:
    """Run an account change and commit it, flashing what it did; on a refusal, nothing
    changes and `refused` answers with the reason."""
    session = get_session()
    try:
        done = do()
        session.commit()
    except AccountError as exc:
        session.rollback()
        text = str(exc)
        return refused(text[:1].upper() + text[1:])
    except IntegrityError:  # someone took the email or number between the check and commit
        session.rollback()
        return refused("Another account took that email or WhatsApp number just now; try again")
    flash(done, "ok")
    return redirect(back)


@bp.get("/settings/staff")
@settings_reader_required
def index() -> str:
    return _list_page()


def _list_page(problem: str = "", values: Mapping[str, str] | None = None) -> str:
    return render_template(
        "settings/staff.html",
        people=accounts.staff(get_session()),
        calendars=_calendars(),
        roles=ROLES,
        min_password=accounts.MIN_PASSWORD_LENGTH,
        problem=problem,
        values=values or {},
    )


@bp.post("/settings/staff")
@admin_required
def create() -> ResponseReturnValue:
    def do() -> str:
        user = accounts.add_user(
            get_session(), _me(), utcnow(), password=_form("password"), **_details()
        )
        return f"Account for {user.name} ({user.email}) created."

    return _change(
        do, lambda problem: (_list_page(problem, request.form), 400), url_for("staff.index")
    )


def _edit_page(
    user: User, problem: str = "", form: str = "", values: Mapping[str, str] | None = None
) -> str:
    return render_template(
        "settings/staff_edit.html",
        person=user,
        calendars=_calendars(),
        roles=ROLES,
        min_password=accounts.MIN_PASSWORD_LENGTH,
        open_cards=accounts.open_cards(get_session(), user),
        problem=problem,
        form=form,
        values=values or {},
    )


def _refused_on(user_id: int, form: str) -> Callable[[str], ResponseReturnValue]:
    """The edit page again, the problem shown by the form it came from, as it was typed."""

    def refused(problem: str) -> ResponseReturnValue:
        return _edit_page(_user(user_id), problem, form, request.form), 400

    return refused


@bp.get("/settings/staff/<int:user_id>")
@admin_required
def edit(user_id: int) -> str:
    return _edit_page(_user(user_id))


@bp.post("/settings/staff/<int:user_id>")
@admin_required
def update(user_id: int) -> ResponseReturnValue:
    def do() -> str:
        user = accounts.update_user(get_session(), _user(user_id), _me(), utcnow(), **_details())
        return f"{user.name}'s account saved."

    back = url_for("staff.edit", user_id=user_id)
    return _change(do, _refused_on(user_id, "details"), back)


@bp.post("/settings/staff/<int:user_id>/password")
@admin_required
def password(user_id: int) -> ResponseReturnValue:
    def do() -> str:
        if _form("password") != _form("confirm"):
            raise AccountError("the two passwords differ; type the same one twice")
        user = _user(user_id)
        accounts.set_password(get_session(), user, _me(), _form("password"), utcnow())
        if user.id == _me().id:  # the admin's other sessions end, this one goes on
            login_user(user)
        return f"{user.name}'s password changed."

    back = url_for("staff.edit", user_id=user_id)
    return _change(do, _refused_on(user_id, "password"), back)


@bp.post("/settings/staff/<int:user_id>/deactivate")
@admin_required
def deactivate(user_id: int) -> ResponseReturnValue:
    def do() -> str:
        user = _user(user_id)
        owned = accounts.deactivate(get_session(), user, _me(), utcnow())
        still = f" {owned} open conversation(s) are still theirs: reassign them." if owned else ""
        return f"{user.name} is deactivated and can no longer log in.{still}"

    return _change(do, _refused_on(user_id, "active"), url_for("staff.index"))


@bp.post("/settings/staff/<int:user_id>/reactivate")
@admin_required
def reactivate(user_id: int) -> ResponseReturnValue:
    def do() -> str:
        user = _user(user_id)
        accounts.reactivate(get_session(), user, _me(), utcnow())
        return f"{user.name} is active again and can log in."

    return _change(do, _refused_on(user_id, "active"), url_for("staff.index"))
