"""Supervisors: SLA reports over a period (page, charts, CSV) and deadlines from history."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, flash, redirect, render_template, request, url_for
from flask_login import current_user

from .. import charts, desk, get_session, reports
from ..db import utcnow
from ..durations import humanize
from ..pipelines import MAX_DURATION_SECONDS, PipelineFileError, format_duration
from ..reports import Period, PeriodError, Report
from . import forms
from .roles import settings_editor_required, supervisor_required

bp = Blueprint("reports", __name__)


@dataclass
class Column:
    label: str
    kind: str  # text, count, percent, seconds
    value: Callable[[Any], Any]


@dataclass
class Table:
    title: str
    columns: list[Column]
    rows: list[Any]


def _percent(share: float | None) -> float | None:
    return None if share is None else round(share * 100, 1)


def tables(report: Report) -> dict[str, Table]:
    """The report's tables, the same rows for the page and the CSV files."""
    levels = [
        Column(f"Level {n} reached", "count", lambda s, n=n: s.levels.get(n, 0))
        for n in range(1, report.max_level + 1)
    ]
    stage = [
        Column("Pipeline", "text", lambda s: s.stage.pipeline_name),
        Column("Stage", "text", lambda s: s.stage.name),
    ]
    return {
        "days": Table(
            "Violations by day",
            [
                Column("Day", "text", lambda d: d[0].isoformat()),
                Column("Stage SLA breaches", "count", lambda d: d[1].breaches),
                Column("Resolution breaches", "count", lambda d: d[1].resolution_breaches),
            ],
            list(report.days.items()),
        ),
        "stages": Table(
            "Violations and escalations by stage",
            [
                *stage,
                Column("Stage SLA breaches", "count", lambda s: s.violations.breaches),
                Column("Resolution breaches", "count", lambda s: s.violations.resolution_breaches),
                *levels,
            ],
            report.stages,
        ),
        "pipelines": Table(
            "Violations by pipeline",
            [
                Column("Pipeline", "text", lambda p: p.name),
                Column("Stage SLA breaches", "count", lambda p: p.violations.breaches),
                Column("Resolution breaches", "count", lambda p: p.violations.resolution_breaches),
            ],
            report.pipelines,
        ),
        "agents": Table(
            "Violations by agent (whose card it was when each fired)",
            [
                Column("Agent", "text", lambda a: a.name),
                Column("Email", "text", lambda a: a.email),
                Column("Stage SLA breaches", "count", lambda a: a.violations.breaches),
                Column("Resolution breaches", "count", lambda a: a.violations.resolution_breaches),
            ],
            report.agents,
        ),
        "times": Table(
            "Hit rate and time in stage (visits that ended in the period; business time "
            "counts the stage's open hours, wall time every hour)",
            [
                *stage,
                Column("SLA", "seconds", lambda s: s.stage.sla_seconds),
                Column("Finished visits", "count", lambda s: s.times.finished),
                Column("Met", "count", lambda s: s.times.met),
                Column("Breached", "count", lambda s: s.times.breached),
                Column("Hit rate", "percent", lambda s: _percent(s.times.hit_rate)),
                Column("Business p50", "seconds", lambda s: s.times.percentiles.get(0.5)),
                Column("Business p90", "seconds", lambda s: s.times.percentiles.get(0.9)),
                Column("Business p95", "seconds", lambda s: s.times.percentiles.get(0.95)),
                Column("Wall p50", "seconds", lambda s: s.times.wall.get(0.5)),
                Column("Wall p90", "seconds", lambda s: s.times.wall.get(0.9)),
            ],
            report.stages,
        ),
        "conversion": Table(
            "Warning to breach",
            [
                Column("Pipeline", "text", lambda c: c[0]),
                Column("Clock", "text", lambda c: c[1]),
                Column("Warnings", "count", lambda c: c[2]),
                Column("Then breached", "count", lambda c: c[3]),
                Column("Conversion", "percent", lambda c: _percent(c[3] / c[2] if c[2] else None)),
            ],
            [
                (s.stage.pipeline_name, s.stage.name, s.warnings, s.warned_then_breached)
                for s in report.stages
                if s.warnings
            ]
            + [
                (name, "Resolution", c.warnings, c.breached)
                for name, c in report.resolution_conversion
            ],
        ),
    }


def shown(column: Column, row: Any) -> str:
    """A cell as the page shows it."""
    value = column.value(row)
    if value is None:
        return "—"
    if column.kind == "percent":
        return f"{value:.1f} %"
    if column.kind == "seconds":
        return humanize(round(value))
    return str(value)


def _timezone() -> str:
    return desk.desk_timezone(get_session()).key


def _period() -> tuple[Period | None, str | None]:
    try:
        return reports.parse_period(request.args, utcnow(), _timezone()), None
    except PeriodError as error:
        return None, str(error)


# The period's query arguments, asked again as given after a mistake.
PERIOD_ARGS = ("period", "start", "end")


def _form_period() -> Period:
    return reports.parse_period(request.form, utcnow(), _timezone())


@bp.get("/reports")
@supervisor_required
def index() -> tuple[str, int] | str:
    period, error = _period()
    if period is None:
        return _page(None, error), 400
    return _page(reports.build(get_session(), period), None)


def _page(report: Report | None, error: str | None) -> str:
    args = report.period.args() if report else forms.given(request.args, PERIOD_ARGS)
    figures: dict[str, str] = {}
    if report is not None:
        names = [s.stage.label for s in report.stages]
        figures = {
            "Violations by day": charts.violations_by_day(
                [d.isoformat() for d in report.days],
                [v.breaches for v in report.days.values()],
                [v.resolution_breaches for v in report.days.values()],
            ),
            "Hit rate by stage": charts.hit_rate_by_stage(
                names, [s.times.hit_rate for s in report.stages]
            ),
            "Time in stage": charts.time_in_stage(
                names,
                *[[s.times.percentiles.get(f) for s in report.stages] for f in reports.PERCENTILES],
            ),
        }
    return render_template(
        "reports.html",
        report=report,
        error=error,
        args=args,
        kind=args.get("period", reports.DEFAULT_PERIOD),
        labels=reports.PERIOD_LABELS,
        timezone=_timezone(),
        tables=tables(report) if report else {},
        figures=figures,
        shown=shown,
        percent=_percent,
    )


@bp.get("/reports.csv")
@supervisor_required
def export() -> Response:
    period, error = _period()
    if period is None:
        return Response(f"{error}\n", 400, mimetype="text/plain")
    name = request.args.get("table", "")
    if name == "suggestions":
        table = suggestion_table(reports.suggestions(get_session(), period))
    else:
        available = tables(Report(period, {}, [], [], [], [], 0))
        if name not in available:
            choices = ", ".join([*available, "suggestions"])
            return Response(f"table must be one of: {choices}\n", 400, mimetype="text/plain")
        table = tables(reports.build(get_session(), period))[name]
    out = io.StringIO()
    out.write("\ufeff")  # UTF-8's byte-order mark: Excel then reads João, not JoÃ£o
    writer = csv.writer(out)
    writer.writerow([_header(c) for c in table.columns])
    for row in table.rows:
        writer.writerow([_cell(c, row) for c in table.columns])
    filename = f"whatsdesk-{name}-{period.first_day}-{period.last_day}.csv"
    return Response(
        out.getvalue(),
        content_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _header(column: Column) -> str:
    return column.label + {"percent": " (%)", "seconds": " (s)"}.get(column.kind, "")


def _cell(column: Column, row: Any) -> Any:
    value = column.value(row)
    if value is None:
        return ""
    if column.kind == "seconds":
        return round(value)
    if column.kind == "text" and str(value)[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + str(value)  # a spreadsheet would run it as a formula
    return value


def suggestion_table(rows: list[reports.Suggestion]) -> Table:
    return Table(
        "Deadlines from history",
        [
            Column("Pipeline", "text", lambda s: s.stage.pipeline_name),
            Column("Stage", "text", lambda s: s.stage.name),
            Column("Current SLA", "seconds", lambda s: s.stage.sla_seconds),
            Column("Finished visits", "count", lambda s: s.sample),
            Column("Breached the current SLA", "percent", lambda s: _percent(s.over_current)),
            Column("p90", "seconds", lambda s: s.p90),
            Column("Suggested SLA", "seconds", lambda s: s.suggested_seconds),
            Column("Would breach the suggestion", "percent", lambda s: _percent(s.over_suggested)),
            Column("Note", "text", lambda s: s.reason),
        ],
        rows,
    )


@bp.get("/reports/suggestions")
@supervisor_required
def suggestions() -> tuple[str, int] | str:
    period, error = _period()
    rows = reports.suggestions(get_session(), period) if period else []
    page = render_template(
        "suggestions.html",
        period=period,
        error=error,
        args=period.args() if period else forms.given(request.args, PERIOD_ARGS),
        kind=(period.kind if period else request.args.get("period", reports.DEFAULT_PERIOD)),
        labels=reports.PERIOD_LABELS,
        timezone=_timezone(),
        rows=rows,
        shown=shown,
        table=suggestion_table(rows),
        may_apply=current_user.may_edit_settings,
        min_sample=reports.MIN_SAMPLE,
        format_duration=format_duration,
    )
    return (page, 400) if error else page


@bp.post("/reports/suggestions/<int:stage_id>/apply")
@settings_editor_required
def apply(stage_id: int) -> Response:
    session = get_session()
    try:
        period = _form_period()
    except PeriodError as error:
        flash(str(error), "error")
        return redirect(url_for("reports.suggestions"))
    back = redirect(url_for("reports.suggestions", **period.args()))
    raw = request.form.get("sla_seconds", "")
    expected = forms.count(raw, MAX_DURATION_SECONDS)
    if expected is None:
        flash("The suggested SLA is missing from the form; apply it from the page.", "error")
        return back
    try:
        done = reports.apply_suggestion(
            session, period, stage_id, expected, current_user._get_current_object(), utcnow()
        )
    except reports.SuggestionError as error:
        session.rollback()
        flash(str(error), "error")
        return back
    except PipelineFileError as error:
        session.rollback()
        flash("The SLA was not changed: " + "; ".join(error.problems), "error")
        return back
    session.commit()
    message = (
        f"{done.stage.label}: SLA {format_duration(done.new_seconds)} "
        f"(was {format_duration(done.old_seconds) if done.old_seconds else 'none'})."
    )
    if done.warning_changed:
        message += (
            f" The warning lead of {format_duration(done.old_warning or 0)} would not fit "
            f"under it, so it is now {format_duration(done.new_warning or 0)} (a fifth)."
        )
    message += (
        " It applies to visits that start from now on; cards already in the stage keep "
        "their deadlines."
    )
    flash(message, "ok")
    return back


@bp.get("/reports/charts.css")
def chart_styles() -> Response:
    """The charts' styles (pygal's, scoped to them): a file, as the CSP wants."""
    response = Response(charts.stylesheet(), mimetype="text/css")
    response.cache_control.max_age = 3600
    return response
