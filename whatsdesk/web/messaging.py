"""Settings: what the desk says — canned replies, approved customer templates, how staff
alerts go out, and the team menu. Every change goes through configuration.edit, so these
pages and the YAML file never drift and each change is audited."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import replace

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user
from sqlalchemy import select

from .. import get_session, settings
from ..bot import LANGUAGES, placeholder_problem
from ..configuration import STALE
from ..models import Pipeline
from ..pipelines import (
    CONTENT_SID_RE,
    KEY_RE,
    MENU_CLOCK_STARTS,
    REPLY_PLACEHOLDERS,
    TEMPLATE_PLACEHOLDERS,
    CannedReplySpec,
    CustomerTemplateSpec,
    DeskSpec,
    MenuSpec,
    NotificationsSpec,
    PipelineFileError,
    RepliesSpec,
    format_duration,
    parse_duration,
)
from . import forms, saving
from .roles import settings_editor_required, settings_reader_required

bp = Blueprint("messaging", __name__)

Change = Callable[[DeskSpec], DeskSpec]
VARIABLE_LINE = re.compile(r"^\s*\{*\s*(\d{1,3})\s*\}*\s*[=:]\s*(.*?)\s*$")
SID_HINT = "an approved template's Content SID is HX followed by 32 hex digits"


# --- reading the forms ---------------------------------------------------------------------


def _field(form: Mapping[str, str], name: str) -> str:
    """A field's text, trimmed, with the browser's CRLF line ends as the YAML keeps them."""
    return form.get(name, "").replace("\r\n", "\n").strip()


def _placeholder_problems(label: str, text: str, allowed: tuple[str, ...]) -> list[str]:
    """The page's field-labelled form of the configuration's own rule."""
    problem = placeholder_problem(text, allowed)
    return [f"{label}: {problem}"] if problem else []


def _content_sid(label: str, value: str, problems: list[str]) -> str:
    if not value:
        problems.append(f"{label}: is required ({SID_HINT})")
    elif not CONTENT_SID_RE.fullmatch(value):
        problems.append(f"{label}: {value!r} is not a Content SID ({SID_HINT})")
    return value


def _variables(
    label: str, raw: str, allowed: tuple[str, ...], problems: list[str]
) -> dict[str, str]:
    """'1 = {customer}' a line → {"1": "{customer}"}, numbered from 1."""
    variables: dict[str, str] = {}
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        match = VARIABLE_LINE.match(line)
        if match is None:
            problems.append(f"{label}, line {number}: write it as 1 = {{{allowed[0]}}}")
            continue
        name, value = match.groups()
        if name in variables:
            problems.append(f"{label}: variable {name} is given twice")
        elif int(name) < 1:
            problems.append(f"{label}: variables are numbered from 1")
        elif not value:
            problems.append(f"{label}: variable {name} is empty")
        else:
            problems += _placeholder_problems(f"{label} {name}", value, allowed)
        variables[name] = value
    return dict(sorted(variables.items(), key=lambda item: int(item[0])))


def _checked(problems: list[str]) -> None:
    if problems:
        raise PipelineFileError(problems)


def canned_from(form: Mapping[str, str]) -> CannedReplySpec:
    reply = CannedReplySpec(title=_field(form, "title"), text=_field(form, "text"))
    problems = [] if reply.title else ["Title: must not be empty"]
    if not reply.text:
        problems.append("Text: must not be empty")
    problems += _placeholder_problems("Text", reply.text, REPLY_PLACEHOLDERS)
    _checked(problems)
    return reply


def template_from(form: Mapping[str, str]) -> CustomerTemplateSpec:
    problems: list[str] = []
    template = CustomerTemplateSpec(
        key=_field(form, "key"),
        name=_field(form, "name"),
        content_sid=_content_sid("Content SID", _field(form, "content_sid"), problems),
        text=_field(form, "text"),
    )
    if not KEY_RE.fullmatch(template.key):
        problems.insert(0, "Key: lowercase letters, digits, - and _ (e.g. follow-up)")
    if not template.name:
        problems.append("Name: must not be empty")
    if not template.text:
        problems.append("Text: must not be empty (what the customer reads, for the history)")
    problems += _placeholder_problems("Text", template.text, REPLY_PLACEHOLDERS)
    raw = _field(form, "variables")
    template.variables = _variables("Variable", raw, REPLY_PLACEHOLDERS, problems)
    _checked(problems)
    return template


def digest_seconds(raw: str) -> int:
    """'off' or 0: every alert alone; else a duration (bare digits are seconds)."""
    if raw.lower() in ("off", "0"):
        return 0
    seconds = forms.count(raw, 10**12)  # bare digits are seconds (too many: refused)
    return parse_duration(raw if seconds is None else seconds)


def notifications_from(form: Mapping[str, str]) -> NotificationsSpec:
    problems: list[str] = []
    spec = NotificationsSpec()
    try:
        spec.digest_seconds = digest_seconds(_field(form, "digest_window"))
    except ValueError as exc:
        problems.append(f"Digest window: {exc}, or off")
    sid, raw = _field(form, "template_sid"), _field(form, "variables")
    if sid:
        spec.template_sid = _content_sid("Alert template SID", sid, problems)
        variables = _variables("Variable", raw, TEMPLATE_PLACEHOLDERS, problems)
        spec.template_variables = variables or {"1": "{text}"}
    elif raw:
        problems.append("Variables: they need an alert template SID")
    _checked(problems)
    return spec


def menu_from(form: Mapping[str, str], known: set[str]) -> MenuSpec:
    problems: list[str] = []
    keys = [key for key in re.split(r"[\s,]+", _field(form, "pipelines")) if key]
    if len(keys) < 2:
        problems.append("Pipelines: a menu offers two or more pipeline keys, in order")
    problems += [f"Pipelines: no pipeline {key!r}" for key in keys if key not in known]
    if len(set(keys)) < len(keys):
        problems.append("Pipelines: a pipeline is offered twice")
    spec = MenuSpec(pipelines=keys)
    try:
        spec.wait_seconds = parse_duration(_field(form, "wait") or "?")
    except ValueError as exc:
        problems.append(f"Wait: {exc}")
    spec.clock_starts = _field(form, "clock_starts")
    if spec.clock_starts not in MENU_CLOCK_STARTS:
        problems.append(f"SLA clock starts: one of {', '.join(MENU_CLOCK_STARTS)}")
    spec.language = _field(form, "language")
    if spec.language not in LANGUAGES:
        problems.append(f"Language: one of {', '.join(LANGUAGES)}")
    sid = _field(form, "template_sid")
    spec.template_sid = _content_sid("Quick-reply template SID", sid, problems) if sid else None
    _checked(problems)
    return spec


# --- changing the configuration ------------------------------------------------------------


def _replies(desk: DeskSpec) -> RepliesSpec:
    return desk.replies or RepliesSpec()


def put_canned(index: int | None, title: str, reply: CannedReplySpec | None) -> Change:
    """Add (index None), replace or remove (reply None) the canned reply at `index`, which
    must still be titled `title`."""

    def change(desk: DeskSpec) -> DeskSpec:
        canned = list(_replies(desk).canned)
        if index is not None and (index >= len(canned) or canned[index].title != title):
            raise PipelineFileError([f"Canned reply {title!r}: {STALE}"])
        taken = {c.title.casefold() for i, c in enumerate(canned) if i != index}
        if reply is not None and reply.title.casefold() in taken:
            raise PipelineFileError([f"Title: a canned reply is already called {reply.title!r}"])
        if index is None and reply is not None:
            canned.append(reply)
        elif index is not None and reply is not None:
            canned[index] = reply
        elif index is not None:
            del canned[index]
        return replace(desk, replies=replace(_replies(desk), canned=canned))

    return change


def put_template(key: str | None, template: CustomerTemplateSpec | None) -> Change:
    """Add (key None), replace or remove (template None) the customer template `key`."""

    def change(desk: DeskSpec) -> DeskSpec:
        templates = list(_replies(desk).templates)
        keys = [t.key for t in templates]
        if key is not None and key not in keys:
            raise PipelineFileError([f"Template {key!r}: {STALE}"])
        others = [t for t in templates if t.key != key]
        if template is not None and template.key in {t.key for t in others}:
            raise PipelineFileError([f"Key: a template with key {template.key!r} exists already"])
        if template is not None and template.name.casefold() in {t.name.casefold() for t in others}:
            raise PipelineFileError([f"Name: a template is already called {template.name!r}"])
        if key is None and template is not None:
            templates.append(template)
        elif key is not None and template is not None:
            templates[keys.index(key)] = template
        elif key is not None:
            del templates[keys.index(key)]
        return replace(desk, replies=replace(_replies(desk), templates=templates))

    return change


def _set(**parts: object) -> Change:
    """A change replacing whole sections of the configuration."""
    return lambda desk: replace(desk, **parts)  # type: ignore[arg-type]


def _save(change: Change, action: str, target: str, done: str, draft: str) -> ResponseReturnValue:
    """Apply the change as the current user and go back to the page saying so; on a problem,
    the page again with the problems and what was typed, nothing changed."""
    try:
        saving.save(change, action, target)
    except PipelineFileError as exc:
        return _refused(exc, draft)
    flash(done, "ok")
    return redirect(url_for("messaging.index", _anchor=draft.split("-")[0]))


def _refused(problem: PipelineFileError, draft: str) -> ResponseReturnValue:
    return _page(problems=problem.problems, draft=draft, values=request.form), 400


# --- pages ---------------------------------------------------------------------------------


def _page(
    problems: list[str] | None = None, draft: str = "", values: Mapping[str, str] | None = None
) -> str:
    """The page; after a refused change, its problems and the form `draft` as it was typed."""
    session = get_session()
    notifications = settings.notifications(session)
    return render_template(
        "settings/messaging.html",
        replies=settings.replies(session),
        notifications=notifications,
        digest_window=format_duration(notifications.digest_seconds)
        if notifications.digest_seconds
        else "off",
        menu=settings.menu(session),
        pipelines=session.scalars(select(Pipeline).order_by(Pipeline.id)).all(),
        languages=LANGUAGES,
        clock_starts=MENU_CLOCK_STARTS,
        reply_placeholders=REPLY_PLACEHOLDERS,
        alert_placeholders=TEMPLATE_PLACEHOLDERS,
        format_duration=format_duration,
        editable=current_user.may_edit_settings,
        problems=problems or [],
        draft=draft,
        values=values or {},
    )


@bp.get("/settings/messaging")
@settings_reader_required
def index() -> str:
    return _page()


@bp.post("/settings/messaging/canned")
@settings_editor_required
def add_canned() -> ResponseReturnValue:
    try:
        reply = canned_from(request.form)
    except PipelineFileError as exc:
        return _refused(exc, "canned-new")
    done = f"Canned reply {reply.title!r} added."
    return _save(put_canned(None, "", reply), "canned-reply", reply.title, done, "canned-new")


@bp.post("/settings/messaging/canned/<int:index>")
@settings_editor_required
def edit_canned(index: int) -> ResponseReturnValue:
    draft, title = f"canned-{index}", request.form.get("original", "")
    try:
        reply = canned_from(request.form)
    except PipelineFileError as exc:
        return _refused(exc, draft)
    done = f"Canned reply {reply.title!r} saved."
    return _save(put_canned(index, title, reply), "canned-reply", title, done, draft)


@bp.post("/settings/messaging/canned/<int:index>/remove")
@settings_editor_required
def remove_canned(index: int) -> ResponseReturnValue:
    title = request.form.get("original", "")
    done = f"Canned reply {title!r} removed."
    return _save(put_canned(index, title, None), "canned-reply", title, done, "canned-list")


@bp.post("/settings/messaging/templates")
@settings_editor_required
def add_template() -> ResponseReturnValue:
    try:
        template = template_from(request.form)
    except PipelineFileError as exc:
        return _refused(exc, "template-new")
    done = f"Template {template.name!r} added."
    return _save(put_template(None, template), "template", template.key, done, "template-new")


@bp.post("/settings/messaging/templates/<key>")
@settings_editor_required
def edit_template(key: str) -> ResponseReturnValue:
    try:
        template = template_from(request.form)
    except PipelineFileError as exc:
        return _refused(exc, f"template-{key}")
    done = f"Template {template.name!r} saved."
    return _save(put_template(key, template), "template", key, done, f"template-{key}")


@bp.post("/settings/messaging/templates/<key>/remove")
@settings_editor_required
def remove_template(key: str) -> ResponseReturnValue:
    done = f"Template {key!r} removed."
    return _save(put_template(key, None), "template", key, done, "template-list")


@bp.post("/settings/messaging/notifications")
@settings_editor_required
def save_notifications() -> ResponseReturnValue:
    try:
        spec = notifications_from(request.form)
    except PipelineFileError as exc:
        return _refused(exc, "notifications")
    done = "Staff alert settings saved."
    return _save(_set(notifications=spec), "notifications", "staff alerts", done, "notifications")


@bp.post("/settings/messaging/menu")
@settings_editor_required
def save_menu() -> ResponseReturnValue:
    known = set(get_session().scalars(select(Pipeline.key)))
    try:
        spec = menu_from(request.form, known)
    except PipelineFileError as exc:
        return _refused(exc, "menu")
    return _save(_set(menu=spec), "menu", "team menu", "Team menu saved.", "menu")


@bp.post("/settings/messaging/menu/remove")
@settings_editor_required
def remove_menu() -> ResponseReturnValue:
    # A menu of no pipelines is no menu (None would leave the stored one alone).
    done = "Team menu removed: new conversations go to the default pipeline."
    return _save(_set(menu=MenuSpec(pipelines=[])), "menu", "team menu", done, "menu")
