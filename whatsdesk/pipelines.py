"""Pipeline configuration as YAML: parse and check a file, naming the line of every mistake."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from . import clock

DURATION_RE = re.compile(r"^(?:(\d+)d)?\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?$")
KEY_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class PipelineFileError(ValueError):
    """The file cannot be loaded; `problems` lists each mistake with its line and field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# A stage's `calendar:` that means "the clock always runs", whatever its pipeline says.
ALWAYS_OPEN = "24/7"


@dataclass
class HolidayDate:
    day: date
    yearly: bool = False


@dataclass
class CalendarSpec:
    key: str
    name: str
    timezone: str
    hours: dict[str, list[str]]
    country: str | None = None
    subdivision: str | None = None
    dates: list[HolidayDate] = field(default_factory=list)
    ics: str | None = None
    line: int = 0


@dataclass
class EscalationSpec:
    after_seconds: int
    to: list[str] = field(default_factory=list)
    line: int = 0


@dataclass
class StageSpec:
    key: str
    name: str
    sla_seconds: int | None = None
    warning_seconds: int | None = None
    alert: list[str] = field(default_factory=list)
    calendar: str | None = None  # a calendar key, ALWAYS_OPEN, or None: the pipeline's
    escalate: list[EscalationSpec] = field(default_factory=list)  # levels after the breach
    line: int = 0


@dataclass
class PipelineSpec:
    key: str
    name: str
    default: bool = False
    stages: list[StageSpec] = field(default_factory=list)
    calendar: str | None = None  # a calendar key, or None: 24/7
    line: int = 0


@dataclass
class DeskSpec:
    """Everything a configuration file holds."""

    pipelines: list[PipelineSpec] = field(default_factory=list)
    calendars: list[CalendarSpec] = field(default_factory=list)


def parse_duration(value: Any) -> int:
    """Seconds from 90, '90s', '2m', '1h30m', '1d'; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 90s, 15m or 2h")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("must be more than zero seconds")
        return value
    match = DURATION_RE.match(str(value).strip()) if isinstance(value, str) else None
    if not match or not any(match.groups()):
        raise ValueError(f"{value!r} is not a duration such as 90s, 15m, 2h or 1h30m")
    d, h, m, s = (int(g or 0) for g in match.groups())
    seconds = d * 86400 + h * 3600 + m * 60 + s
    if seconds <= 0:
        raise ValueError("must be more than zero seconds")
    return seconds


def format_duration(seconds: int) -> str:
    """The shortest text parse_duration reads back as the same seconds."""
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


class _Reader:
    """Walks the YAML node tree, collecting problems as 'line N: field: message'."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, node: yaml.Node | None, path: str, message: str) -> None:
        line = f"line {node.start_mark.line + 1}: " if node is not None else ""
        self.problems.append(f"{line}{path}: {message}")

    def mapping(self, node: yaml.Node, path: str, allowed: set[str]) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, path, "expected a mapping of fields")
            return {}
        fields: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key not in allowed:
                self.fail(
                    key_node,
                    f"{path}.{key}",
                    f"unknown field (known: {', '.join(sorted(allowed))})",
                )
            elif key in fields:
                self.fail(key_node, f"{path}.{key}", "given twice")
            else:
                fields[key] = value_node
        return fields

    def sequence(self, node: yaml.Node | None, path: str) -> list[yaml.Node]:
        if node is None:
            return []
        if not isinstance(node, yaml.SequenceNode):
            self.fail(node, path, "expected a list")
            return []
        return list(node.value)

    def text(
        self,
        fields: dict[str, yaml.Node],
        name: str,
        path: str,
        parent: yaml.Node,
        pattern: re.Pattern[str] | None = None,
    ) -> str:
        node = fields.get(name)
        if node is None:
            self.fail(parent, f"{path}.{name}", "is required")
            return ""
        if not isinstance(node, yaml.ScalarNode) or not str(node.value).strip():
            self.fail(node, f"{path}.{name}", "expected a non-empty text")
            return ""
        value = str(node.value).strip()
        if pattern is not None and not pattern.match(value):
            self.fail(
                node, f"{path}.{name}", f"{value!r} must be lowercase letters, digits, - or _"
            )
        return value

    def optional_text(self, fields: dict[str, yaml.Node], name: str, path: str) -> str | None:
        node = fields.get(name)
        if node is None:
            return None
        if not isinstance(node, yaml.ScalarNode) or not str(node.value).strip():
            self.fail(node, f"{path}.{name}", "expected a non-empty text")
            return None
        return str(node.value).strip()

    def duration(self, fields: dict[str, yaml.Node], name: str, path: str) -> int | None:
        node = fields.get(name)
        if node is None or (isinstance(node, yaml.ScalarNode) and node.value in ("", "null", "~")):
            return None
        value: Any = (
            yaml.safe_load(yaml.serialize(node)) if isinstance(node, yaml.ScalarNode) else None
        )
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(node, f"{path}.{name}", str(exc))
            return None

    def flag(self, fields: dict[str, yaml.Node], name: str, path: str) -> bool:
        node = fields.get(name)
        if node is None:
            return False
        value = yaml.safe_load(yaml.serialize(node)) if isinstance(node, yaml.ScalarNode) else None
        if not isinstance(value, bool):
            self.fail(node, f"{path}.{name}", "expected true or false")
            return False
        return value


def parse(source: str) -> DeskSpec:
    """Read and check a configuration file; PipelineFileError lists every problem found."""
    try:
        root = yaml.compose(source, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        said = [getattr(exc, "context", None), getattr(exc, "problem", None)]
        problem = ", ".join(part for part in said if part) or str(exc)
        raise PipelineFileError([f"{where}file: not valid YAML: {problem}"]) from exc
    reader = _Reader()
    if root is None:
        raise PipelineFileError(
            ["line 1: file: the file is empty; expected `pipelines:` with a list"]
        )
    top = reader.mapping(root, "file", {"pipelines", "calendars"})
    calendars = [
        _calendar(reader, node, f"calendars[{i}]")
        for i, node in enumerate(reader.sequence(top.get("calendars"), "calendars"))
    ]
    _check_unique(reader, [(c.key, c.line) for c in calendars], "calendars", "calendar key")
    nodes = reader.sequence(top.get("pipelines"), "pipelines")
    if not nodes and not reader.problems:
        reader.fail(root, "pipelines", "at least one pipeline is required")
    specs = [_pipeline(reader, node, f"pipelines[{i}]") for i, node in enumerate(nodes)]
    _check_unique(reader, [(s.key, s.line) for s in specs], "pipelines", "pipeline key")
    defaults = [(i, s) for i, s in enumerate(specs) if s.default]
    for i, spec in defaults[1:]:
        reader.problems.append(
            f"line {spec.line}: pipelines[{i}].default: only one pipeline can be `default: true`"
            f" (pipelines[{defaults[0][0]}] already is)"
        )
    if reader.problems:
        raise PipelineFileError(reader.problems)
    return DeskSpec(pipelines=specs, calendars=calendars)


def _pipeline(reader: _Reader, node: yaml.Node, path: str) -> PipelineSpec:
    fields = reader.mapping(node, path, {"key", "name", "default", "stages", "calendar"})
    spec = PipelineSpec(
        key=reader.text(fields, "key", path, node, KEY_RE),
        name=reader.text(fields, "name", path, node),
        default=reader.flag(fields, "default", path),
        calendar=reader.optional_text(fields, "calendar", path),
        line=node.start_mark.line + 1,
    )
    if spec.calendar == ALWAYS_OPEN:
        spec.calendar = None
    stage_nodes = reader.sequence(fields.get("stages"), f"{path}.stages")
    if not stage_nodes:
        reader.fail(node, f"{path}.stages", "at least one stage is required")
    spec.stages = [_stage(reader, n, f"{path}.stages[{i}]") for i, n in enumerate(stage_nodes)]
    _check_unique(reader, [(s.key, s.line) for s in spec.stages], f"{path}.stages", "stage key")
    return spec


def _stage(reader: _Reader, node: yaml.Node, path: str) -> StageSpec:
    allowed = {"key", "name", "sla", "warning", "alert", "calendar", "escalate"}
    fields = reader.mapping(node, path, allowed)
    spec = StageSpec(
        key=reader.text(fields, "key", path, node, KEY_RE),
        name=reader.text(fields, "name", path, node),
        sla_seconds=reader.duration(fields, "sla", path),
        warning_seconds=reader.duration(fields, "warning", path),
        calendar=reader.optional_text(fields, "calendar", path),
        line=node.start_mark.line + 1,
    )
    if spec.warning_seconds and not spec.sla_seconds:
        reader.fail(fields["warning"], f"{path}.warning", "a warning needs an `sla` to warn before")
    elif spec.warning_seconds and spec.sla_seconds and spec.warning_seconds >= spec.sla_seconds:
        reader.fail(fields["warning"], f"{path}.warning", "must be shorter than the sla")
    spec.alert = _emails(reader, fields.get("alert"), f"{path}.alert")
    levels = reader.sequence(fields.get("escalate"), f"{path}.escalate")
    if levels and not spec.sla_seconds:
        reader.fail(fields["escalate"], f"{path}.escalate", "escalation levels need an `sla`")
    spec.escalate = [
        _escalation(reader, node, f"{path}.escalate[{i}]") for i, node in enumerate(levels)
    ]
    return spec


def _emails(reader: _Reader, node: yaml.Node | None, path: str) -> list[str]:
    emails = []
    for i, item in enumerate(reader.sequence(node, path)):
        if isinstance(item, yaml.ScalarNode) and "@" in str(item.value):
            emails.append(str(item.value).strip().lower())
        else:
            reader.fail(item, f"{path}[{i}]", "expected a staff member's email")
    return emails


def _escalation(reader: _Reader, node: yaml.Node, path: str) -> EscalationSpec:
    fields = reader.mapping(node, path, {"after", "to"})
    after = reader.duration(fields, "after", path)
    if "after" not in fields:
        reader.fail(node, f"{path}.after", "is required: how long after the breach, e.g. 15m")
    to = _emails(reader, fields.get("to"), f"{path}.to")
    if not to and "to" not in fields:
        reader.fail(node, f"{path}.to", "is required: the staff emails to tell")
    return EscalationSpec(after_seconds=after or 0, to=to, line=node.start_mark.line + 1)


def _calendar(reader: _Reader, node: yaml.Node, path: str) -> CalendarSpec:
    fields = reader.mapping(node, path, {"key", "name", "timezone", "hours", "holidays"})
    spec = CalendarSpec(
        key=reader.text(fields, "key", path, node, KEY_RE),
        name=reader.optional_text(fields, "name", path) or "",
        timezone=reader.text(fields, "timezone", path, node),
        hours=_hours(reader, fields.get("hours"), f"{path}.hours", node),
        line=node.start_mark.line + 1,
    )
    spec.name = spec.name or spec.key
    if spec.timezone and not _known_timezone(spec.timezone):
        reader.fail(
            fields["timezone"],
            f"{path}.timezone",
            f"unknown timezone {spec.timezone!r} (use an IANA name such as America/Sao_Paulo)",
        )
    elif spec.timezone and "hours" in fields:
        try:
            clock.Calendar.from_hours(spec.timezone, spec.hours)
        except ValueError as exc:
            reader.fail(fields["hours"], f"{path}.hours", str(exc))
    holidays = fields.get("holidays")
    if holidays is not None:
        _holidays(reader, holidays, f"{path}.holidays", spec)
    return spec


def _known_timezone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _hours(
    reader: _Reader, node: yaml.Node | None, path: str, parent: yaml.Node
) -> dict[str, list[str]]:
    if node is None:
        reader.fail(parent, path, 'is required, e.g. mon-fri: ["09:00-18:00"]')
        return {}
    if not isinstance(node, yaml.MappingNode):
        reader.fail(node, path, 'expected days with their hours, e.g. mon-fri: ["09:00-18:00"]')
        return {}
    hours: dict[str, list[str]] = {}
    for key_node, value_node in node.value:
        days = str(key_node.value).strip().lower()
        items = reader.sequence(value_node, f"{path}.{days}")
        if not all(isinstance(i, yaml.ScalarNode) for i in items):
            reader.fail(value_node, f"{path}.{days}", 'expected a list like ["09:00-18:00"]')
            continue
        hours[days] = [str(i.value).strip() for i in items]
    return hours


def _holidays(reader: _Reader, node: yaml.Node, path: str, spec: CalendarSpec) -> None:
    fields = reader.mapping(node, path, {"country", "subdivision", "dates", "ics"})
    spec.country = reader.optional_text(fields, "country", path)
    spec.subdivision = reader.optional_text(fields, "subdivision", path)
    spec.ics = reader.optional_text(fields, "ics", path)
    if spec.subdivision and not spec.country:
        reader.fail(node, f"{path}.subdivision", "needs a `country`")
    for i, item in enumerate(reader.sequence(fields.get("dates"), f"{path}.dates")):
        holiday = _holiday_date(reader, item, f"{path}.dates[{i}]")
        if holiday is not None:
            spec.dates.append(holiday)


def _holiday_date(reader: _Reader, node: yaml.Node, path: str) -> HolidayDate | None:
    yearly = False
    day_node: yaml.Node | None = node
    if isinstance(node, yaml.MappingNode):
        fields = reader.mapping(node, path, {"date", "yearly"})
        day_node = fields.get("date")
        yearly = reader.flag(fields, "yearly", path)
        if day_node is None:
            reader.fail(node, f"{path}.date", "is required")
            return None
    value = (
        yaml.safe_load(yaml.serialize(day_node)) if isinstance(day_node, yaml.ScalarNode) else None
    )
    if isinstance(value, str):
        try:
            value = date.fromisoformat(value.strip())
        except ValueError:
            value = None
    if not isinstance(value, date) or isinstance(value, datetime):
        reader.fail(day_node, path, "expected a date such as 2026-12-24")
        return None
    return HolidayDate(day=value, yearly=yearly)


def _check_unique(reader: _Reader, keyed: list[tuple[str, int]], path: str, what: str) -> None:
    seen: set[str] = set()
    for key, line in keyed:
        if key and key in seen:
            reader.problems.append(f"line {line}: {path}: {what} {key!r} is used twice")
        seen.add(key)


def dump(spec: DeskSpec) -> str:
    """The YAML text that `parse` reads back as the same configuration."""
    data: dict[str, Any] = {}
    if spec.calendars:
        data["calendars"] = [_calendar_dict(c) for c in spec.calendars]
    data["pipelines"] = [_pipeline_dict(p) for p in spec.pipelines]
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _calendar_dict(spec: CalendarSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"key": spec.key, "name": spec.name, "timezone": spec.timezone}
    out["hours"] = spec.hours
    holidays: dict[str, Any] = {}
    if spec.country:
        holidays["country"] = spec.country
    if spec.subdivision:
        holidays["subdivision"] = spec.subdivision
    if spec.dates:
        holidays["dates"] = [
            {"date": d.day.isoformat(), "yearly": True} if d.yearly else d.day.isoformat()
            for d in spec.dates
        ]
    if spec.ics:
        holidays["ics"] = spec.ics
    if holidays:
        out["holidays"] = holidays
    return out


def _pipeline_dict(spec: PipelineSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"key": spec.key, "name": spec.name}
    if spec.default:
        out["default"] = True
    if spec.calendar:
        out["calendar"] = spec.calendar
    out["stages"] = [_stage_dict(s) for s in spec.stages]
    return out


def _stage_dict(spec: StageSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"key": spec.key, "name": spec.name}
    if spec.sla_seconds:
        out["sla"] = format_duration(spec.sla_seconds)
    if spec.warning_seconds:
        out["warning"] = format_duration(spec.warning_seconds)
    if spec.alert:
        out["alert"] = list(spec.alert)
    if spec.calendar:
        out["calendar"] = spec.calendar
    if spec.escalate:
        out["escalate"] = [
            {"after": format_duration(e.after_seconds), "to": list(e.to)} for e in spec.escalate
        ]
    return out
