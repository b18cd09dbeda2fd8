"""Log in and out."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required, login_user, logout_user
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response
from wtforms import EmailField, PasswordField
from wtforms.validators import DataRequired, Length

from .. import accounts, get_session, login_manager, throttle
from ..db import utcnow
from ..durations import humanize
from ..models import User

bp = Blueprint("auth", __name__)


class LoginForm(FlaskForm):  # type: ignore[misc]
    # No Email(): it needs the email_validator package, and a malformed address simply
    # matches no account.
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=200)])


class LogoutForm(FlaskForm):  # type: ignore[misc]
    pass


@login_manager.user_loader
def load_user(session_id: str) -> User | None:
    return accounts.session_user(get_session(), session_id)


def _safe_next(target: str | None) -> str:
    """Only same-site paths, so a login link cannot send people elsewhere."""
    # Browsers read a backslash as a slash: "/\\evil.example" would leave the site.
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        if not urlsplit(target).netloc:
            return target
    return url_for("queue.index")


@bp.route("/login", methods=["GET", "POST"])
def login() -> str | Response | tuple[str, int]:
    if current_user.is_authenticated:
        return redirect(url_for("queue.index"))
    form = LoginForm()
    if form.validate_on_submit():
        email, address = form.email.data, request.remote_addr or "unknown"
        db = get_session()
        wait = throttle.attempt(db, email, address, utcnow())
        db.commit()  # counted before the password is checked: tries at once all count
        if wait:
            flash(f"Too many failed logins. Try again in {humanize(wait)}.", "error")
            return render_template("login.html", form=form), 429
        user = accounts.authenticate(db, email, form.password.data)
        if user is not None:
            throttle.succeeded(db, email, address)
            accounts.start_session(user)
            db.commit()
            session.permanent = True  # ends after SESSION_IDLE_HOURS without a request
            login_user(user)
            return redirect(_safe_next(request.args.get("next")))
        flash("Wrong email or password.", "error")
    return render_template("login.html", form=form)


@bp.post("/logout")
@login_required
def logout() -> Response:
    form = LogoutForm()
    if form.validate_on_submit():
        # Every session of the person ends, a copy of this one's cookie included.
        accounts.end_sessions(current_user)
        get_session().commit()
        logout_user()
    return redirect(url_for("auth.login"))
