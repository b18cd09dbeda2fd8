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
