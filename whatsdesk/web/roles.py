"""Which pages each role may open."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import abort
from flask_login import current_user, login_required

F = TypeVar("F", bound=Callable[..., Any])


def supervisor_required(view: F) -> F:
    """Supervisors and admins only; anyone else logged in gets 403, and the anonymous the
    login page."""

    @wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if not current_user.is_supervisor:
            abort(403, "this page is for supervisors")
        return view(*args, **kwargs)

    return login_required(guarded)  # type: ignore[return-value]


def settings_reader_required(view: F) -> F:
    """The settings pages: supervisors and admins read them; anyone else gets 403."""
    return supervisor_required(view)


def settings_editor_required(view: F) -> F:
    """Changing settings: admins, and supervisors an admin granted it; others get 403."""

    @wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if not current_user.may_edit_settings:
            abort(403, "changing settings needs an admin, or a supervisor an admin allowed to")
        return view(*args, **kwargs)

    return login_required(guarded)  # type: ignore[return-value]


def admin_required(view: F) -> F:
    """Admins only (staff accounts and roles)."""

    @wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if not current_user.is_admin:
            abort(403, "this is for admins")
        return view(*args, **kwargs)

    return login_required(guarded)  # type: ignore[return-value]
