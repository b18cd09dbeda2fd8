"""Settings without code: pipelines, stages, calendars, the YAML file and the audit log.

Every change is a `configuration.edit` of the same DeskSpec the YAML file holds, so the pages
and `pipeline dump`/`load` cannot drift apart; each form is checked field by field first, to
name the field a person typed in."""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import zoneinfo
from collections.abc import Callable
from datetime import date
from typing import Any

from flask import Blueprint, Response, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select
from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Response as Redirect

from .. import audit, calendars, clock, configuration, get_session, pipelines
from ..db import utcnow
from ..models import AuditEntry, User
from ..pipelines import (
    ALWAYS_OPEN,
    KEY_RE,
    LEAST_LOADED,
    RESOLVE,
    CalendarSpec,
    DeskSpec,
    EscalationSpec,
    HolidayDate,
    PipelineFileError,
    PipelineSpec,
    StageSpec,
    TimeoutSpec,
)
from . import forms, saving
from .roles import settings_editor_required, settings_reader_required

bp = Blueprint("settings", __name__, url_prefix="/settings")
log = logging.getLogger(__name__)

AUDIT_PAGE = 25
BLANK_HOUR_ROWS = 2
Form = MultiDict[str, str]
Page = tuple[str, int]  # a page re-shown with what was wrong, and its status
Answer = Redirect | Page


class Invalid(Exception):
    """A form's problems, each 'Field: what is wrong'."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# --- reading -------------------------------------------------------------------------------------


@bp.get("")
@settings_reader_required
def index() -> str:
    return render_template("settings/index.html", desk=_desk(), **_common())


@bp.get("/pipelines/<key>")
@settings_reader_required
def pipeline(key: str) -> str:
    found = _pipeline(_desk(), key)
    return _pipeline_page(found, _pipeline_values(found))


@bp.get("/pipelines/<key>/stages/<stage_key>")
@settings_reader_required
def stage(key: str, stage_key: str) -> str:
    found = _pipeline(_desk(), key)
    return _stage_page(found, _stage(found, stage_key), _stage_values(_stage(found, stage_key)))


@bp.get("/calendars/<key>")
@settings_reader_required
def calendar(key: str) -> str:
    found = _calendar(_desk(), key)
    return _calendar_page(found, _calendar_values(found))


@bp.get("/calendars/new")
@settings_editor_required
def new_calendar() -> str:
    blank = CalendarSpec(key="", name="", timezone="", hours={"mon-fri": ["09:00-18:00"]})
    return _calendar_page(None, _calendar_values(blank))


@bp.get("/yaml")
@settings_reader_required
def yaml_page() -> str:
    text = configuration.current_yaml(get_session())
    return render_template("settings/yaml.html", text=text, source=text, problems=[], **_common())


@bp.get("/yaml.txt")
@settings_reader_required
def yaml_download() -> Response:
    return Response(
        configuration.current_yaml(get_session()),
        mimetype="text/plain",
        headers={"Content-Disposition": 'attachment; filename="whatsdesk.yaml"'},
    )


@bp.get("/audit")
@settings_reader_required
def audit_log() -> str:
    raw = request.args.get("before", "")
    before_id = forms.count(raw, forms.MAX_ID) if raw else None
    if raw and before_id is None:
        abort(400, f"before={raw[:40]!r} is not an audit entry number; start from the newest")
    found = audit.entries(get_session(), limit=AUDIT_PAGE + 1, before_id=before_id)
    shown = found[:AUDIT_PAGE]
    older = shown[-1].id if len(found) > AUDIT_PAGE else None
    rows = [(entry, _change(entry)) for entry in shown]
    return render_template(
        "settings/audit.html", rows=rows, older=older, paged=before_id is not None, **_common()
    )


# --- changing ------------------------------------------------------------------------------------


@bp.post("/pipelines")
@settings_editor_required
def create_pipeline() -> Answer:
    desk = _desk()
    form = request.form
    try:
        key = _new_key(form, "key", "Key", {p.key for p in desk.pipelines}, "pipeline")
        first = _new_key(form, "stage_key", "First stage key", set(), "stage")
        spec = PipelineSpec(
            key=key,
            name=_required(form, "name", "Name"),
            stages=[StageSpec(key=first, name=_required(form, "stage_name", "First stage name"))],
        )
    except Invalid as exc:
        return _index_with(exc.problems)
    return _save(
        lambda d: dataclasses.replace(d, pipelines=[*d.pipelines, spec]),
        "pipeline",
        key,
        False,
        f"Created pipeline {spec.name!r}.",
        url_for("settings.pipeline", key=key),
        lambda problems: _index_with(problems),
    )


@bp.post("/pipelines/<key>")
@settings_editor_required
def update_pipeline(key: str) -> Answer:
    desk = _desk()
    found = _pipeline(desk, key)
    form = request.form

    def fail(problems: list[str]) -> Page:
        return _pipeline_page(found, form, problems), 400

    try:
        changed = _pipeline_from_form(form, found, desk)
    except Invalid as exc:
        return fail(exc.problems)

    def change(d: DeskSpec) -> DeskSpec:
        def one(p: PipelineSpec) -> PipelineSpec:
            if p.key == key:
                configuration.unchanged_since(f"Pipeline {p.name!r}", _own(p), form.get("version"))
                return dataclasses.replace(changed, stages=p.stages)
            return dataclasses.replace(p, default=False) if changed.default else p  # one default

        return dataclasses.replace(d, pipelines=[one(p) for p in d.pipelines])

    return _save(
        change,
        "pipeline",
        key,
        {key: None} if _retime(form) else False,
        f"Saved pipeline {changed.name!r}.",
        url_for("settings.pipeline", key=key),
        fail,
    )


@bp.post("/pipelines/<key>/stages")
@settings_editor_required
def add_stage(key: str) -> Answer:
    found = _pipeline(_desk(), key)
    form = request.form
    try:
        stage_key = _new_key(form, "key", "Key", {s.key for s in found.stages}, "stage")
        problems: list[str] = []
        sla = _duration(form, "sla", "SLA", problems)
        _raise_if(problems)
        new = StageSpec(key=stage_key, name=_required(form, "name", "Name"), sla_seconds=sla)
    except Invalid as exc:
        return _pipeline_page(found, _pipeline_values(found), exc.problems, form), 400
    return _save(
        configuration.on_pipeline(key, lambda p: dataclasses.replace(p, stages=[*p.stages, new])),
        "stage",
        f"{key}/{stage_key}",
        False,
        f"Added stage {new.name!r}; set its SLA, alerts and escalation here.",
        url_for("settings.stage", key=key, stage_key=stage_key),
        lambda problems: (_pipeline_page(found, _pipeline_values(found), problems, form), 400),
    )


@bp.post("/pipelines/<key>/stages/<stage_key>/move")
@settings_editor_required
def move_stage(key: str, stage_key: str) -> Answer:
    found = _pipeline(_desk(), key)
    _stage(found, stage_key)
    step = -1 if request.form.get("direction") == "up" else 1

    def move(p: PipelineSpec) -> PipelineSpec:
        stages = list(p.stages)
        at = [s.key for s in stages].index(stage_key)
        to = min(max(at + step, 0), len(stages) - 1)
        stages[at], stages[to] = stages[to], stages[at]
        return dataclasses.replace(p, stages=stages)

    return _save(
        configuration.on_pipeline(key, move),
        "stage-order",
        key,
        False,
        "Stage order saved.",
        url_for("settings.pipeline", key=key),
        lambda problems: (_pipeline_page(found, _pipeline_values(found), problems), 400),
    )


@bp.post("/pipelines/<key>/stages/<stage_key>/remove")
@settings_editor_required
def remove_stage(key: str, stage_key: str) -> Answer:
    found = _pipeline(_desk(), key)
    gone = _stage(found, stage_key)

    def fail(problems: list[str]) -> Page:
        return _pipeline_page(found, _pipeline_values(found), problems), 400

    if configuration.stage_has_history(get_session(), key, stage_key):
        return fail(
            [
                f"Stage {gone.name!r} has conversations in its history, so it cannot be "
                "removed (their timelines name it). Rename it or stop routing cards to it."
            ]
        )
    return _save(
        configuration.on_pipeline(
            key,
            lambda p: dataclasses.replace(p, stages=[s for s in p.stages if s.key != stage_key]),
        ),
        "stage-removed",
        f"{key}/{stage_key}",
        False,
        f"Removed stage {gone.name!r}.",
        url_for("settings.pipeline", key=key),
        fail,
    )


@bp.post("/pipelines/<key>/stages/<stage_key>")
@settings_editor_required
def update_stage(key: str, stage_key: str) -> Answer:
    desk = _desk()
    found = _pipeline(desk, key)
    old = _stage(found, stage_key)
    form = request.form

    def fail(problems: list[str]) -> Page:
        return _stage_page(found, old, form, problems), 400

    try:
        changed = _stage_from_form(form, old, found, desk)
    except Invalid as exc:
        return fail(exc.problems)

    def change(current: StageSpec) -> StageSpec:
        configuration.unchanged_since(f"Stage {current.name!r}", current, form.get("version"))
        return changed

    return _save(
        configuration.on_pipeline(key, configuration.on_stage(stage_key, change)),
        "stage",
        f"{key}/{stage_key}",
        {key: {stage_key}} if _retime(form) else False,
        f"Saved stage {changed.name!r}.",
        url_for("settings.stage", key=key, stage_key=stage_key),
        fail,
    )


@bp.post("/calendars")
@settings_editor_required
def create_calendar() -> Answer:
    return _save_calendar(None)


@bp.post("/calendars/<key>")
@settings_editor_required
def update_calendar(key: str) -> Answer:
    return _save_calendar(_calendar(_desk(), key))


@bp.post("/yaml")
@settings_editor_required
def yaml_import() -> Answer:
    upload = request.files.get("file")
    target = "pasted YAML"
    text = request.form.get("yaml", "")

    def fail(problems: list[str]) -> Page:
        current = configuration.current_yaml(get_session())
        page = render_template(
            "settings/yaml.html", text=current, source=text, problems=problems, **_common()
        )
        return page, 400

    if upload is not None and upload.filename:
        target = upload.filename[:200]
        try:
            text = upload.read().decode("utf-8")
        except UnicodeDecodeError:
            return fail([f"{upload.filename}: not UTF-8 text; save the file as UTF-8"])
    try:
        spec = pipelines.parse(text)
    except PipelineFileError as exc:
        return fail(exc.problems)
    session = get_session()
    try:
        applied = configuration.apply(
            session, spec, _user(), "import", target, utcnow(), retime=_retime(request.form)
        )
        session.commit()
    except PipelineFileError as exc:
        session.rollback()
        return fail(exc.problems)
    saving.rearm(applied.timers, "import")
    flash(f"Imported {applied.count} pipeline(s) from {target}.", "ok")
    return redirect(url_for("settings.index"))


# --- one path for every change -------------------------------------------------------------------


def _save(
    change: Callable[[DeskSpec], DeskSpec],
    action: str,
    target: str,
    retime: configuration.Retime,
    done: str,
    then: str,
    fail: Callable[[list[str]], Page],
) -> Answer:
    """Apply the change (validated whole, audited), commit, move re-timed alarms; or show
    why not, changing nothing."""
    try:
        applied = saving.save(change, action, target, retime)
    except PipelineFileError as exc:
        return fail(exc.problems)
    if retime:
        done += f" Re-timed {len(applied.timers)} open card(s)."
    flash(done, "ok")
    return redirect(then)


def _user() -> User:
    user: User = current_user._get_current_object()
    return user


def _retime(form: Form) -> bool:
    return form.get("retime") == "on"


# --- forms → specs -------------------------------------------------------------------------------


def _raise_if(problems: list[str]) -> None:
    if problems:
        raise Invalid(problems)


def _required(form: Form, name: str, label: str) -> str:
    value = form.get(name, "").strip()
    if not value:
        raise Invalid([f"{label}: is required"])
    return value


def _new_key(form: Form, name: str, label: str, taken: set[str], what: str) -> str:
    key = form.get(name, "").strip()
    if not KEY_RE.match(key):
        raise Invalid([f"{label}: {key!r} must be lowercase letters, digits, - or _"])
    if key in taken:
        raise Invalid([f"{label}: there is already a {what} {key!r}"])
    return key


def _duration(form: Form, name: str, label: str, problems: list[str]) -> int | None:
    raw = form.get(name, "").strip()
    if not raw:
        return None
    try:
        seconds = forms.count(raw, 10**12)  # bare digits are seconds (too many: refused)
        return pipelines.parse_duration(raw if seconds is None else seconds)
    except ValueError as exc:
        problems.append(f"{label}: {exc}")
        return None


def _rows(form: Form, name: str, label: str, problems: list[str]) -> int:
    """How many rows the page sent (a hidden field): 0 and a problem when it is not a number
    from 0 to forms.MAX_ROWS, as no page of ours sends."""
    rows = forms.count(form.get(name, "0"), forms.MAX_ROWS)
    if rows is None:
        problems.append(f"{label}: the form is damaged (at most {forms.MAX_ROWS} rows); reload")
        return 0
    return rows


def _lead(
    problems: list[str], label: str, lead: int | None, limit: int | None, limit_label: str
) -> None:
    """A warning lead needs the deadline it warns before, and must be shorter than it."""
    if lead and not limit:
        problems.append(f"{label}: needs the {limit_label} it warns before")
    elif lead and limit and lead >= limit:
        problems.append(
            f"{label}: {pipelines.format_duration(lead)} must be shorter than the "
            f"{limit_label} ({pipelines.format_duration(limit)})"
        )


def _pipeline_from_form(form: Form, old: PipelineSpec, desk: DeskSpec) -> PipelineSpec:
    problems: list[str] = []
    name = form.get("name", "").strip()
    if not name:
        problems.append("Name: is required")
    default = form.get("default") == "on"
    if old.default and not default:
        problems.append(
            "Default: make another pipeline the default instead (new conversations need one)"
        )
    chosen = form.get("calendar", "")
    if chosen and chosen not in {c.key for c in desk.calendars}:
        problems.append(f"Calendar: there is no calendar {chosen!r}")
    resolution = _duration(form, "resolution", "Resolution SLA", problems)
    warning = _duration(form, "resolution_warning", "Resolution warning", problems)
    _lead(problems, "Resolution warning", warning, resolution, "resolution SLA")
    reopen = _duration(form, "reopen_within", "Reopen within", problems)
    reopen_stage = form.get("reopen_stage", "") or None
    if reopen_stage and reopen_stage not in {s.key for s in old.stages}:
        problems.append(f"Reopen in stage: there is no stage {reopen_stage!r}")
    elif reopen_stage and not reopen:
        problems.append("Reopen in stage: also say within how long a customer reopens, e.g. 24h")
    _raise_if(problems)
    return dataclasses.replace(
        old,
        name=name,
        default=default,
        calendar=chosen or None,
        resolution_seconds=resolution,
        resolution_warning_seconds=warning,
        reopen_seconds=reopen,
        reopen_stage=reopen_stage if reopen else None,
    )


def _stage_from_form(
    form: Form, old: StageSpec, pipeline: PipelineSpec, desk: DeskSpec
) -> StageSpec:
    problems: list[str] = []
    staff = {u.email.lower() for u in _staff()}
    name = form.get("name", "").strip()
    if not name:
        problems.append("Name: is required")
    sla = _duration(form, "sla", "SLA", problems)
    warning = _duration(form, "warning", "Warning", problems)
    _lead(problems, "Warning", warning, sla, "SLA")
    chosen = form.get("calendar", "")
    if chosen and chosen != ALWAYS_OPEN and chosen not in {c.key for c in desk.calendars}:
        problems.append(f"Calendar: there is no calendar {chosen!r}")
    alert = _emails(form.getlist("alert"), staff, "Alert", problems)
    levels = _levels(form, staff, problems)
    if levels and not sla:
        problems.append("Escalation levels: need an SLA (they count from its breach)")
    reassign = form.get("reassign", "").strip().lower() or None
    if reassign and reassign != LEAST_LOADED and reassign not in staff:
        problems.append(f"Reassign: no staff account {reassign}")
    elif reassign and not sla:
        problems.append("Reassign: reassigning on breach needs an SLA")
    timeout = _timeout(form, old, pipeline, problems)
    _raise_if(problems)
    return dataclasses.replace(
        old,
        name=name,
        sla_seconds=sla,
        warning_seconds=warning,
        alert=alert,
        calendar=chosen or None,
        escalate=levels,
        pause=form.get("pause") == "on",
        timeout=timeout,
        reassign=reassign,
    )


def _emails(chosen: list[str], staff: set[str], label: str, problems: list[str]) -> list[str]:
    emails = sorted({e.strip().lower() for e in chosen if e.strip()})
    for email in emails:
        if email not in staff:
            problems.append(f"{label}: no staff account {email}")
    return emails


def _levels(form: Form, staff: set[str], problems: list[str]) -> list[EscalationSpec]:
    """The rows of the levels table: kept ones in order, the blank row if filled in."""
    count = _rows(form, "levels", "Escalation levels", problems)
    levels: list[EscalationSpec] = []
    for row in range(count + 1):
        if form.get(f"level-{row}-remove") == "on":
            continue
        label = f"Escalation level {len(levels) + 1}"
        after_text = form.get(f"level-{row}-after", "").strip()
        chosen = form.getlist(f"level-{row}-to")
        if not after_text and not chosen:
            continue  # an empty row
        after = _duration(form, f"level-{row}-after", f"{label}: After", problems)
        if not after_text:
            problems.append(f"{label}: After: is required (how long after the breach)")
        to = _emails(chosen, staff, f"{label}: To", problems)
        if not to:
            problems.append(f"{label}: choose who is told")
        levels.append(EscalationSpec(after_seconds=after or 0, to=to))
    return levels


def _timeout(
    form: Form, old: StageSpec, pipeline: PipelineSpec, problems: list[str]
) -> TimeoutSpec | None:
    after = _duration(form, "timeout_after", "Timeout: After", problems)
    then = form.get("timeout_then", RESOLVE) or RESOLVE
    message = form.get("timeout_message", "").strip() or None
    if after is None:
        if message and not form.get("timeout_after", "").strip():
            problems.append("Timeout: After: is required for the message to be sent")
        return None
    if then != RESOLVE and then not in {s.key for s in pipeline.stages}:
        problems.append(f"Timeout: Then: there is no stage {then!r}")
    elif then == old.key:
        problems.append("Timeout: Then: a stage cannot time out into itself")
    if message and len(message) > 1600:
        problems.append("Timeout: Message: WhatsApp takes at most 1600 characters")
    return TimeoutSpec(after_seconds=after, then=then, message=message)


def _save_calendar(old: CalendarSpec | None) -> Answer:
    desk = _desk()
    form = request.form

    def fail(problems: list[str]) -> Page:
        return _calendar_page(old, form, problems), 400

    try:
        changed = _calendar_from_form(form, old, desk)
    except Invalid as exc:
        return fail(exc.problems)
    key = changed.key

    def change(d: DeskSpec) -> DeskSpec:
        if old is None:
            return dataclasses.replace(d, calendars=[*d.calendars, changed])

        def one(c: CalendarSpec) -> CalendarSpec:
            if c.key != key:
                return c
            configuration.unchanged_since(f"Calendar {c.name!r}", c, form.get("version"))
            return changed

        return dataclasses.replace(d, calendars=[one(c) for c in d.calendars])

    return _save(
        change,
        "calendar",
        key,
        _retime(form),
        f"Saved calendar {changed.name!r}.",
        url_for("settings.calendar", key=key),
        fail,
    )


def _calendar_from_form(form: Form, old: CalendarSpec | None, desk: DeskSpec) -> CalendarSpec:
    problems: list[str] = []
    if old is None:
        key = _new_key(form, "key", "Key", {c.key for c in desk.calendars}, "calendar")
        if key == "new":  # /settings/calendars/new is the page for creating one
            raise Invalid(["Key: 'new' is taken by this page's address; choose another"])
    else:
        key = old.key
    timezone = form.get("timezone", "").strip()
    if not timezone:
        problems.append("Timezone: is required, e.g. America/Sao_Paulo")
    elif not clock.known_timezone(timezone):
        problems.append(
            f"Timezone: unknown timezone {timezone!r} (use an IANA name such as "
            "America/Sao_Paulo or Europe/Lisbon)"
        )
    hours = _hours(form, problems)
    if hours and timezone and clock.known_timezone(timezone):
        try:
            clock.Calendar.from_hours(timezone, hours)
        except ValueError as exc:
            problems.append(f"Hours: {str(exc).removeprefix('hours: ')}")
    country = form.get("country", "").strip().upper() or None
    subdivision = form.get("subdivision", "").strip() or None
    if subdivision and not country:
        problems.append("Public holidays: a subdivision needs a country")
    elif country:
        if subdivision:
            subdivision = calendars.subdivision_named(country, subdivision)
        today = utcnow().year
        try:
            calendars.country_holidays(country, subdivision, range(today, today + 1))
        except ValueError as exc:
            problems.append(f"Public holidays: {exc}")
    dates = _closed_dates(form.get("dates", ""), problems)
    _raise_if(problems)
    return CalendarSpec(
        key=key,
        name=form.get("name", "").strip() or key,
        timezone=timezone,
        hours=hours,
        country=country,
        subdivision=subdivision,
        dates=dates,
        ics=old.ics if old else None,
    )


def _hours(form: Form, problems: list[str]) -> dict[str, list[str]]:
    count = _rows(form, "groups", "Hours", problems)
    hours: dict[str, list[str]] = {}
    for row in range(count + BLANK_HOUR_ROWS):
        days = form.get(f"days-{row}", "").strip().lower().replace(" ", "")
        spans = [s.strip() for s in form.get(f"hours-{row}", "").split(",") if s.strip()]
        if not days and not spans:
            continue
        if not days or not spans:
            problems.append(
                "Hours: give both the days and their hours, "
                "e.g. mon-fri and 09:00-12:00, 13:00-18:00"
            )
        elif days in hours:
            problems.append(f"Hours: {days!r} is given twice")
        else:
            hours[days] = spans
    if not hours and not problems:
        problems.append("Hours: give at least one day's hours, e.g. mon-fri 09:00-18:00")
    return hours


def _closed_dates(text: str, problems: list[str]) -> list[HolidayDate]:
    """One date a line, 'yearly' after it for every year: '2026-12-24', '2026-12-31 yearly'."""
    dates = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if not words:
            continue
        yearly = words[1:] == ["yearly"]
        try:
            day = date.fromisoformat(words[0])
            if len(words) > 1 and not yearly:
                raise ValueError
        except ValueError:
            problems.append(
                f"Closed dates: line {number}: {line.strip()!r} is not a date such as "
                "2026-12-24 (add ' yearly' for every year)"
            )
            continue
        dates.append(HolidayDate(day=day, yearly=yearly))
    return dates


# --- specs → form values (what the pages show) ---------------------------------------------------


def _text(seconds: int | None) -> str:
    return pipelines.format_duration(seconds) if seconds else ""


def _own(spec: PipelineSpec) -> PipelineSpec:
    """A pipeline without its stages: what its page edits (stages have pages of their own)."""
    return dataclasses.replace(spec, stages=[])


def _pipeline_values(spec: PipelineSpec) -> Form:
    values: Form = MultiDict(
        {
            "version": configuration.version(_own(spec)),
            "name": spec.name,
            "calendar": spec.calendar or "",
            "resolution": _text(spec.resolution_seconds),
            "resolution_warning": _text(spec.resolution_warning_seconds),
            "reopen_within": _text(spec.reopen_seconds),
            "reopen_stage": spec.reopen_stage or "",
        }
    )
    if spec.default:
        values["default"] = "on"
    return values


def _stage_values(spec: StageSpec) -> Form:
    values: Form = MultiDict(
        {
            "version": configuration.version(spec),
            "name": spec.name,
            "sla": _text(spec.sla_seconds),
            "warning": _text(spec.warning_seconds),
            "calendar": spec.calendar or "",
            "reassign": spec.reassign or "",
            "timeout_after": _text(spec.timeout.after_seconds if spec.timeout else None),
            "timeout_then": spec.timeout.then if spec.timeout else RESOLVE,
            "timeout_message": (spec.timeout.message or "") if spec.timeout else "",
            "levels": str(len(spec.escalate)),
        }
    )
    if spec.pause:
        values["pause"] = "on"
    for email in spec.alert:
        values.add("alert", email)
    for row, level in enumerate(spec.escalate):
        values[f"level-{row}-after"] = _text(level.after_seconds)
        for email in level.to:
            values.add(f"level-{row}-to", email)
    return values


def _calendar_values(spec: CalendarSpec) -> Form:
    values: Form = MultiDict(
        {
            "version": configuration.version(spec),
            "key": spec.key,
            "name": spec.name,
            "timezone": spec.timezone,
            "country": spec.country or "",
            "subdivision": spec.subdivision or "",
            "dates": "\n".join(
                d.day.isoformat() + (" yearly" if d.yearly else "") for d in spec.dates
            ),
            "groups": str(len(spec.hours)),
        }
    )
    for row, (days, spans) in enumerate(spec.hours.items()):
        values[f"days-{row}"] = days
        values[f"hours-{row}"] = ", ".join(spans)
    return values


# --- pages ---------------------------------------------------------------------------------------


def _desk() -> DeskSpec:
    return configuration.current(get_session())


def _staff() -> list[User]:
    return list(get_session().scalars(select(User).order_by(User.name, User.email)))


def _common() -> dict[str, Any]:
    staff = _staff()
    return {
        "can_edit": current_user.may_edit_settings,
        "staff": staff,
        "names": {u.email.lower(): u.name for u in staff},
        "duration": lambda seconds: pipelines.format_duration(seconds) if seconds else "—",
        "always_open": ALWAYS_OPEN,
        "least_loaded": LEAST_LOADED,
        "resolve": RESOLVE,
    }


def _index_with(problems: list[str]) -> Page:
    page = render_template(
        "settings/index.html", desk=_desk(), problems=problems, new=request.form, **_common()
    )
    return page, 400


def _pipeline_page(
    spec: PipelineSpec, form: Form, problems: list[str] | None = None, new: Form | None = None
) -> str:
    return render_template(
        "settings/pipeline.html",
        p=spec,
        desk=_desk(),
        form=form,
        new=new or MultiDict(),
        problems=problems or [],
        **_common(),
    )


def _stage_page(
    pipeline: PipelineSpec, spec: StageSpec, form: Form, problems: list[str] | None = None
) -> str:
    form = _rows_shown(form, "levels")
    return render_template(
        "settings/stage.html",
        p=pipeline,
        s=spec,
        desk=_desk(),
        form=form,
        problems=problems or [],
        **_common(),
    )


def _calendar_page(spec: CalendarSpec | None, form: Form, problems: list[str] | None = None) -> str:
    form = _rows_shown(form, "groups")
    groups = int(form.get("groups", "0"))
    return render_template(
        "settings/calendar.html",
        c=spec,
        form=form,
        rows=range(groups + BLANK_HOUR_ROWS),
        timezones=sorted(z for z in zoneinfo.available_timezones() if "/" in z or z == "UTC"),
        problems=problems or [],
        **_common(),
    )


def _rows_shown(form: Form, name: str) -> Form:
    """The form with its row count one the page can show (a damaged one: none)."""
    if forms.count(form.get(name, "0"), forms.MAX_ROWS) is not None:
        return form
    shown = MultiDict(form)
    shown[name] = "0"
    return shown


def _pipeline(desk: DeskSpec, key: str) -> PipelineSpec:
    found = next((p for p in desk.pipelines if p.key == key), None)
    if found is None:
        abort(404, f"there is no pipeline {key!r}")
    return found


def _stage(pipeline: PipelineSpec, key: str) -> StageSpec:
    found = next((s for s in pipeline.stages if s.key == key), None)
    if found is None:
        abort(404, f"pipeline {pipeline.key!r} has no stage {key!r}")
    return found


def _calendar(desk: DeskSpec, key: str) -> CalendarSpec:
    found = next((c for c in desk.calendars if c.key == key), None)
    if found is None:
        abort(404, f"there is no calendar {key!r}")
    return found


def _change(entry: AuditEntry) -> dict[str, Any]:
    """How the audit page shows an entry: YAML as a unified diff, anything else as JSON."""
    before, after = entry.before, entry.after
    if isinstance(before, str) or isinstance(after, str):
        lines = difflib.unified_diff(
            (before or "").splitlines(),
            (after or "").splitlines(),
            "before",
            "after",
            lineterm="",
        )
        return {"diff": list(lines)}
    return {"before": _json(before), "after": _json(after)}


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
