"""Pipeline configuration as YAML: parse and check a file, naming the line of every mistake."""

from __future__ import annotations

import itertools
import re
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from typing import Any

import yaml

from . import clock
from .bot import COMMANDS, LANGUAGES, TEXT_KEYS, placeholder_problem
from .bot import PLACEHOLDERS as BOT_PLACEHOLDERS

DURATION_RE = re.compile(r"^(?:(\d+)d)?\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?$")
KEY_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
CONTENT_SID_RE = re.compile(r"HX[0-9a-fA-F]{32}")


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


# A stage's `timeout.then` that closes the conversation; anything else names a stage.
RESOLVE = "resolve"
# A stage's `reassign` that picks the agent on shift with the fewest open cards.
LEAST_LOADED = "least-loaded"
# The events a pipeline's `automation` answers with a stage.
AUTOMATION_EVENTS = ("new_conversation", "customer_message", "agent_reply", "reopen")
# The longest text each field's column holds (keys, names, references); free texts (a
# message, a reply's text) have no limit.
FIELD_LIMITS = {
    "key": 64,
    "name": 120,
    "title": 120,
    "timezone": 64,
    "subdivision": 64,
    "calendar": 64,
    "stage": 64,
    "to": 64,
    "then": 64,
    "reassign": 254,
    "content_sid": 64,
    "template": 64,
}
# What an alert template's variables may say.
TEMPLATE_PLACEHOLDERS = ("name", "text", "card")


@dataclass
class TimeoutSpec:
    after_seconds: int
    then: str = RESOLVE  # RESOLVE or a stage key
    message: str | None = None  # told to the customer when it rings
    line: int = 0  # of `then` (or of the timeout), for problems found once all stages are read


@dataclass
class StageSpec:
    key: str
    name: str
    sla_seconds: int | None = None
    warning_seconds: int | None = None
    alert: list[str] = field(default_factory=list)
    calendar: str | None = None  # a calendar key, ALWAYS_OPEN, or None: the pipeline's
    escalate: list[EscalationSpec] = field(default_factory=list)  # levels after the breach
    pause: bool = False  # time here does not count against the resolution SLA
    timeout: TimeoutSpec | None = None
    reassign: str | None = None  # on breach: LEAST_LOADED or a staff email
    line: int = 0


@dataclass
class AutomationRule:
    to: str  # a stage key of the pipeline
    only_from: list[str] = field(default_factory=list)  # stage keys; empty: from any stage


@dataclass
class PipelineSpec:
    key: str
    name: str
    default: bool = False
    stages: list[StageSpec] = field(default_factory=list)
    calendar: str | None = None  # a calendar key, or None: 24/7
    resolution_seconds: int | None = None
    resolution_warning_seconds: int | None = None
    automation: dict[str, AutomationRule] = field(default_factory=dict)
    language: str = "en"  # of the bot: en, pt-BR or es
    texts: dict[str, str] = field(default_factory=dict)  # the bot's texts to replace
    keywords: dict[str, list[str]] = field(default_factory=dict)  # stop/start/status words
    reopen_seconds: int | None = None  # a message within this long of resolution reopens
    reopen_stage: str | None = None
    line: int = 0


@dataclass
class NotificationsSpec:
    """How staff alerts go out: digests in a storm, a template outside the 24-hour window."""

    digest_seconds: int = 30  # 0: every alert on its own
    template_sid: str | None = None
    template_variables: dict[str, str] = field(default_factory=dict)


# What canned replies and customer templates may say.
REPLY_PLACEHOLDERS = ("customer", "agent", "card")


@dataclass
class CannedReplySpec:
    title: str
    text: str


@dataclass
class CustomerTemplateSpec:
    """An approved WhatsApp template agents may send a customer (outside the 24-hour window
    nothing else goes through)."""

    key: str
    name: str
    content_sid: str
    text: str  # what the customer reads, for the agent and the history
    variables: dict[str, str] = field(default_factory=dict)


@dataclass
class RepliesSpec:
    canned: list[CannedReplySpec] = field(default_factory=list)
    templates: list[CustomerTemplateSpec] = field(default_factory=list)


MENU_CLOCK_STARTS = ("choice", "first_message")


@dataclass
class MenuSpec:
    """One number, several teams: a new conversation is asked which pipeline it is for."""

    pipelines: list[str] = field(default_factory=list)  # keys, in the order offered
    wait_seconds: int = 300  # no valid answer by then: the default pipeline
    clock_starts: str = "choice"  # or "first_message": when the chosen stage's SLA starts
    language: str = "en"
    # An approved quick-reply template asking the same question: its buttons' payloads are
    # the pipeline keys; {{1}} is the customer's name.
    template_sid: str | None = None
    line: int = 0


@dataclass
class DeskSpec:
    """Everything a configuration file holds."""

    pipelines: list[PipelineSpec] = field(default_factory=list)
    calendars: list[CalendarSpec] = field(default_factory=list)
    notifications: NotificationsSpec | None = None  # None: leave the stored settings alone
    replies: RepliesSpec | None = None  # None: leave the stored replies alone
    menu: MenuSpec | None = None  # None: leave the stored menu alone


MAX_DURATION_DAYS = 365
MAX_DURATION_SECONDS = MAX_DURATION_DAYS * 86400  # deadlines stay dates; columns stay int32


def parse_duration(value: Any) -> int:
    """Seconds from 90, '90s', '2m', '1h30m', '1d' — more than zero, at most 365 days;
    ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 90s, 15m or 2h")
    if isinstance(value, int):
        seconds = value
    else:
        match = DURATION_RE.match(str(value).strip()) if isinstance(value, str) else None
        if not match or not any(match.groups()):
            raise ValueError(f"{value!r} is not a duration such as 90s, 15m, 2h or 1h30m")
        d, h, m, s = (int(g or 0) for g in match.groups())
        seconds = d * 86400 + h * 3600 + m * 60 + s
    if seconds <= 0:
        raise ValueError("must be more than zero seconds")
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"must be at most {MAX_DURATION_DAYS} days")
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

    def scalar(self, node: yaml.Node, path: str) -> str:
        """A list item's or a mapping value's text; a list or a mapping there is refused
        (it would be stored as the parser's own description of it)."""
        if not isinstance(node, yaml.ScalarNode):
            self.fail(node, path, "expected a text, not a list or a mapping")
            return ""
        return str(node.value)

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
        return self.storable(node, name, path, value)

    def storable(self, node: yaml.Node, name: str, path: str, value: str) -> str:
        """The value, if its column can hold it (FIELD_LIMITS; no NUL character anywhere)."""
        limit = FIELD_LIMITS.get(name)
        if limit is not None and len(value) > limit:
            self.fail(node, f"{path}.{name}", f"is {len(value)} characters; at most {limit}")
        elif "\x00" in value:
            self.fail(node, f"{path}.{name}", "may not contain a NUL character")
        return value

    def optional_text(self, fields: dict[str, yaml.Node], name: str, path: str) -> str | None:
        node = fields.get(name)
        if node is None:
            return None
        if not isinstance(node, yaml.ScalarNode) or not str(node.value).strip():
            self.fail(node, f"{path}.{name}", "expected a non-empty text")
            return None
        return self.storable(node, name, path, str(node.value).strip())

    def duration(self, fields: dict[str, yaml.Node], name: str, path: str) -> int | None:
        node = fields.get(name)
        if node is None or (isinstance(node, yaml.ScalarNode) and node.value in ("", "null", "~")):
            return None
        value = _scalar(node)
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(node, f"{path}.{name}", str(exc))
            return None

    def flag(self, fields: dict[str, yaml.Node], name: str, path: str) -> bool:
        node = fields.get(name)
        if node is None:
            return False
        value = _scalar(node)
        if not isinstance(value, bool):
            self.fail(node, f"{path}.{name}", "expected true or false")
            return False
        return value


def _scalar(node: yaml.Node | None) -> Any:
    """A scalar node's value as YAML reads it (None for any other node). A value YAML's own
    types refuse, such as the impossible date 2026-02-29, is its text: the caller's check
    then names what was expected, as for any other wrong value."""
    if not isinstance(node, yaml.ScalarNode):
        return None
    try:
        return yaml.safe_load(yaml.serialize(node))
    # What PyYAML's constructors raise for a value their type refuses: ValueError for an
    # impossible date, AttributeError or KeyError for an explicit tag such as !!timestamp
    # or !!bool on a text that is neither.
    except (ValueError, yaml.YAMLError, AttributeError, KeyError, TypeError, OverflowError):
        return node.value


def _refuse_aliases(source: str) -> None:
    """A file may not repeat a part by alias (`*name`): each alias is read again where it
    is used, so a few nested ones in a small file make millions of nodes to check."""
    for event in yaml.parse(source, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            line = event.start_mark.line + 1 if event.start_mark else 1
            raise PipelineFileError(
                [
                    f"line {line}: file: YAML aliases (*{event.anchor}) are not accepted; "
                    "write the part out where it is needed"
                ]
            )


def parse(source: str) -> DeskSpec:
    """Read and check a configuration file; PipelineFileError lists every problem found."""
    try:
        _refuse_aliases(source)
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
    allowed = {"pipelines", "calendars", "notifications", "replies", "menu"}
    top = reader.mapping(root, "file", allowed)
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
    notifications = None
    if "notifications" in top:
        notifications = _notifications(reader, top["notifications"], "notifications")
    replies = _replies(reader, top["replies"], "replies") if "replies" in top else None
    menu = _menu(reader, top["menu"], "menu") if "menu" in top else None
    if reader.problems:
        raise PipelineFileError(reader.problems)
    return DeskSpec(
        pipelines=specs,
        calendars=calendars,
        notifications=notifications,
        replies=replies,
        menu=menu,
    )


def _menu(reader: _Reader, node: yaml.Node, path: str) -> MenuSpec:
    allowed = {"pipelines", "wait", "clock_starts", "language", "template"}
    fields = reader.mapping(node, path, allowed)
    spec = MenuSpec(line=node.start_mark.line + 1)
    spec.pipelines = [
        reader.scalar(item, f"{path}.pipelines[{i}]").strip()
        for i, item in enumerate(reader.sequence(fields.get("pipelines"), path))
    ]
    if len(spec.pipelines) < 2:
        reader.fail(node, f"{path}.pipelines", "a menu needs two or more pipeline keys")
    spec.wait_seconds = reader.duration(fields, "wait", path) or spec.wait_seconds
    spec.clock_starts = reader.optional_text(fields, "clock_starts", path) or "choice"
    if spec.clock_starts not in MENU_CLOCK_STARTS:
        reader.fail(fields["clock_starts"], f"{path}.clock_starts", "choice or first_message")
    spec.language = reader.optional_text(fields, "language", path) or "en"
    if spec.language not in LANGUAGES:
        reader.fail(fields["language"], f"{path}.language", f"one of {', '.join(LANGUAGES)}")
    spec.template_sid = reader.optional_text(fields, "template", path)
    if spec.template_sid and not CONTENT_SID_RE.fullmatch(spec.template_sid):
        reader.fail(fields["template"], f"{path}.template", "expected HX and 32 hex digits")
    return spec


def _replies(reader: _Reader, node: yaml.Node, path: str) -> RepliesSpec:
    fields = reader.mapping(node, path, {"canned", "templates"})
    spec = RepliesSpec()
    for i, item in enumerate(reader.sequence(fields.get("canned"), f"{path}.canned")):
        where = f"{path}.canned[{i}]"
        parts = reader.mapping(item, where, {"title", "text"})
        reply = CannedReplySpec(
            title=reader.text(parts, "title", where, item),
            text=reader.text(parts, "text", where, item),
        )
        _check_placeholders(reader, parts.get("text"), f"{where}.text", reply.text)
        spec.canned.append(reply)
    for i, item in enumerate(reader.sequence(fields.get("templates"), f"{path}.templates")):
        where = f"{path}.templates[{i}]"
        parts = reader.mapping(item, where, {"key", "name", "content_sid", "text", "variables"})
        template = CustomerTemplateSpec(
            key=reader.text(parts, "key", where, item, KEY_RE),
            name=reader.text(parts, "name", where, item),
            content_sid=reader.text(parts, "content_sid", where, item),
            text=reader.text(parts, "text", where, item),
        )
        if template.content_sid and not CONTENT_SID_RE.fullmatch(template.content_sid):
            reader.fail(
                parts["content_sid"],
                f"{where}.content_sid",
                "expected an approved template's Content SID: HX and 32 hex digits",
            )
        _check_placeholders(reader, parts.get("text"), f"{where}.text", template.text)
        variables = parts.get("variables")
        if variables is not None:
            template.variables = _template_variables(reader, variables, where, REPLY_PLACEHOLDERS)
        spec.templates.append(template)
    _check_unique(reader, [(t.key, 0) for t in spec.templates], f"{path}.templates", "key")
    return spec


def _check_placeholders(
    reader: _Reader,
    node: yaml.Node | None,
    path: str,
    text: str,
    placeholders: tuple[str, ...] = REPLY_PLACEHOLDERS,
) -> None:
    """Refuse a text that names anything but `placeholders` in braces (placeholder_problem)."""
    problem = placeholder_problem(text, placeholders)
    if problem:
        reader.fail(node, path, problem)


def _notifications(reader: _Reader, node: yaml.Node, path: str) -> NotificationsSpec:
    fields = reader.mapping(node, path, {"digest_window", "alert_template"})
    spec = NotificationsSpec()
    window = fields.get("digest_window")
    if window is not None:
        raw = _scalar(window)
        if raw in (0, "0", "off", False):
            spec.digest_seconds = 0
        else:
            spec.digest_seconds = reader.duration(fields, "digest_window", path) or 0
    template = fields.get("alert_template")
    if template is not None:
        where = f"{path}.alert_template"
        parts = reader.mapping(template, where, {"content_sid", "variables"})
        spec.template_sid = reader.text(parts, "content_sid", where, template)
        if spec.template_sid and not CONTENT_SID_RE.fullmatch(spec.template_sid):
            reader.fail(
                parts["content_sid"],
                f"{where}.content_sid",
                "expected an approved template's Content SID: HX and 32 hex digits",
            )
        variables = parts.get("variables")
        spec.template_variables = (
            {"1": "{text}"}
            if variables is None
            else _template_variables(reader, variables, where, TEMPLATE_PLACEHOLDERS)
        )
    return spec


def _template_variables(
    reader: _Reader, node: yaml.Node, path: str, placeholders: tuple[str, ...]
) -> dict[str, str]:
    """A WhatsApp template's numbered variables, each a text that may use `placeholders`
    (a customer template's, or the alert template's)."""
    if not isinstance(node, yaml.MappingNode):
        example = ", ".join(f'"{n}": "{{{p}}}"' for n, p in enumerate(placeholders[:2], 1))
        reader.fail(node, f"{path}.variables", f"expected e.g. {{{example}}}")
        return {}
    variables = {}
    for key_node, value_node in node.value:
        name = str(key_node.value)
        where = f"{path}.variables.{name}"
        value = reader.scalar(value_node, where)
        if not (name.isascii() and name.isdigit()):
            reader.fail(key_node, where, "template variables are numbered: 1, 2, …")
        _check_placeholders(reader, value_node, where, value, placeholders)
        variables[name] = value
    return variables


def _pipeline(reader: _Reader, node: yaml.Node, path: str) -> PipelineSpec:
    allowed = {"key", "name", "default", "stages", "calendar", "resolution"}
    allowed |= {"resolution_warning", "automation", "language", "texts", "keywords", "reopen"}
    fields = reader.mapping(node, path, allowed)
    spec = PipelineSpec(
        key=reader.text(fields, "key", path, node, KEY_RE),
        name=reader.text(fields, "name", path, node),
        default=reader.flag(fields, "default", path),
        calendar=reader.optional_text(fields, "calendar", path),
        resolution_seconds=reader.duration(fields, "resolution", path),
        resolution_warning_seconds=reader.duration(fields, "resolution_warning", path),
        line=node.start_mark.line + 1,
    )
    warning = spec.resolution_warning_seconds
    if warning and not spec.resolution_seconds:
        reader.fail(
            fields["resolution_warning"], f"{path}.resolution_warning", "needs a `resolution`"
        )
    elif warning and spec.resolution_seconds and warning >= spec.resolution_seconds:
        reader.fail(
            fields["resolution_warning"],
            f"{path}.resolution_warning",
            "must be shorter than the resolution SLA",
        )
    if spec.calendar == ALWAYS_OPEN:
        spec.calendar = None
    stage_nodes = reader.sequence(fields.get("stages"), f"{path}.stages")
    if not stage_nodes:
        reader.fail(node, f"{path}.stages", "at least one stage is required")
    spec.stages = [_stage(reader, n, f"{path}.stages[{i}]") for i, n in enumerate(stage_nodes)]
    _check_unique(reader, [(s.key, s.line) for s in spec.stages], f"{path}.stages", "stage key")
    keys = {s.key for s in spec.stages}
    _bot_settings(reader, fields, path, spec, keys)
    if "automation" in fields:
        spec.automation = _automation(reader, fields["automation"], f"{path}.automation", keys)
    for i, stage in enumerate(spec.stages):
        if stage.timeout and stage.timeout.then not in keys | {RESOLVE}:
            reader.problems.append(
                f"line {stage.timeout.line}: {path}.stages[{i}].timeout.then: no stage "
                f"{stage.timeout.then!r} in this pipeline (or `{RESOLVE}`)"
            )
        elif stage.timeout and stage.timeout.then == stage.key:
            reader.problems.append(
                f"line {stage.timeout.line}: {path}.stages[{i}].timeout.then: a stage cannot "
                "time out into itself (it would start again and again)"
            )
    return spec


def _bot_settings(
    reader: _Reader, fields: dict[str, yaml.Node], path: str, spec: PipelineSpec, keys: set[str]
) -> None:
    """language, texts, keywords and reopen: what the bot says and does for this pipeline."""
    spec.language = reader.optional_text(fields, "language", path) or "en"
    if spec.language not in LANGUAGES:
        reader.fail(
            fields["language"], f"{path}.language", f"one of {', '.join(LANGUAGES)}, please"
        )
    texts = fields.get("texts")
    if texts is not None:
        for key, node in reader.mapping(texts, f"{path}.texts", set(TEXT_KEYS)).items():
            value = str(node.value) if isinstance(node, yaml.ScalarNode) else ""
            allowed = BOT_PLACEHOLDERS.get(key, ())
            _check_placeholders(reader, node, f"{path}.texts.{key}", value, allowed)
            if not value.strip():
                reader.fail(node, f"{path}.texts.{key}", "expected a non-empty text")
            spec.texts[key] = value
    words = fields.get("keywords")
    if words is not None:
        for command, node in reader.mapping(words, f"{path}.keywords", set(COMMANDS)).items():
            where = f"{path}.keywords.{command}"
            items = reader.sequence(node, where)
            spec.keywords[command] = [
                reader.scalar(item, f"{where}[{i}]").strip() for i, item in enumerate(items)
            ]
    reopen = fields.get("reopen")
    if reopen is not None:
        parts = reader.mapping(reopen, f"{path}.reopen", {"within", "stage"})
        spec.reopen_seconds = reader.duration(parts, "within", f"{path}.reopen")
        if spec.reopen_seconds is None and "within" not in parts:
            reader.fail(reopen, f"{path}.reopen.within", "is required, e.g. 24h")
        spec.reopen_stage = reader.optional_text(parts, "stage", f"{path}.reopen")
        if spec.reopen_stage and spec.reopen_stage not in keys:
            reader.fail(parts["stage"], f"{path}.reopen.stage", "no such stage in this pipeline")


def _automation(
    reader: _Reader, node: yaml.Node, path: str, stages: set[str]
) -> dict[str, AutomationRule]:
    fields = reader.mapping(node, path, set(AUTOMATION_EVENTS))
    rules = {}
    for event, value in fields.items():
        where = f"{path}.{event}"
        if isinstance(value, yaml.MappingNode):
            # A new conversation or a reopened card has no stage to come from.
            allowed = {"to", "from"} if event in ("customer_message", "agent_reply") else {"to"}
            parts = reader.mapping(value, where, allowed)
            rule = AutomationRule(to=reader.text(parts, "to", where, value))
            for i, item in enumerate(reader.sequence(parts.get("from"), f"{where}.from")):
                key = reader.scalar(item, f"{where}.from[{i}]").strip()
                rule.only_from.append(key)
                if isinstance(item, yaml.ScalarNode) and key not in stages:
                    reader.fail(item, f"{where}.from[{i}]", f"no stage {item.value!r} here")
        elif isinstance(value, yaml.ScalarNode) and str(value.value).strip():
            rule = AutomationRule(to=str(value.value).strip())
        else:
            reader.fail(value, where, "expected a stage key, or {to: stage, from: [stages]}")
            continue
        if rule.to and rule.to not in stages:
            reader.fail(value, where, f"no stage {rule.to!r} in this pipeline")
        rules[event] = rule
    return rules


def _stage(reader: _Reader, node: yaml.Node, path: str) -> StageSpec:
    allowed = {"key", "name", "sla", "warning", "alert", "calendar", "escalate", "pause"}
    allowed |= {"timeout", "reassign"}
    fields = reader.mapping(node, path, allowed)
    spec = StageSpec(
        key=reader.text(fields, "key", path, node, KEY_RE),
        name=reader.text(fields, "name", path, node),
        sla_seconds=reader.duration(fields, "sla", path),
        warning_seconds=reader.duration(fields, "warning", path),
        calendar=reader.optional_text(fields, "calendar", path),
        pause=reader.flag(fields, "pause", path),
        line=node.start_mark.line + 1,
    )
    if "timeout" in fields:
        spec.timeout = _timeout(reader, fields["timeout"], f"{path}.timeout")
    reassign = reader.optional_text(fields, "reassign", path)
    if reassign is not None:
        if reassign != LEAST_LOADED and "@" not in reassign:
            reader.fail(
                fields["reassign"],
                f"{path}.reassign",
                f"expected `{LEAST_LOADED}` or a staff member's email",
            )
        elif not spec.sla_seconds:
            reader.fail(
                fields["reassign"], f"{path}.reassign", "reassigning on breach needs an `sla`"
            )
        spec.reassign = reassign if reassign == LEAST_LOADED else reassign.lower()
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
    for i, (before, level) in enumerate(itertools.pairwise(spec.escalate), start=1):
        if level.after_seconds < before.after_seconds:  # levels are numbered in time order
            sooner, later = (
                format_duration(level.after_seconds),
                format_duration(before.after_seconds),
            )
            reader.fail(
                levels[i],
                f"{path}.escalate[{i}].after",
                f"level {i + 1} must not come before level {i} ({sooner} < {later})",
            )
    return spec


def _timeout(reader: _Reader, node: yaml.Node, path: str) -> TimeoutSpec | None:
    fields = reader.mapping(node, path, {"after", "then", "message"})
    known = len(reader.problems)
    after = reader.duration(fields, "after", path)
    if after is None and len(reader.problems) == known:  # absent or empty, not mistyped
        where = fields.get("after") or node
        reader.fail(where, f"{path}.after", "is required: how long in the stage, e.g. 23h")
    then = reader.optional_text(fields, "then", path) or RESOLVE
    message = reader.optional_text(fields, "message", path)
    if message is not None and len(message) > 1600:
        reader.fail(fields["message"], f"{path}.message", "WhatsApp takes at most 1600 characters")
    line = (fields.get("then") or node).start_mark.line + 1
    return TimeoutSpec(after_seconds=after or 0, then=then, message=message, line=line)


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
    if spec.timezone and not clock.known_timezone(spec.timezone):
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
    value = _scalar(day_node)
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
    if spec.notifications is not None:
        data["notifications"] = _notifications_dict(spec.notifications)
    if spec.menu is not None and spec.menu.pipelines:
        data["menu"] = {
            "pipelines": list(spec.menu.pipelines),
            "wait": format_duration(spec.menu.wait_seconds),
            "clock_starts": spec.menu.clock_starts,
            "language": spec.menu.language,
        }
        if spec.menu.template_sid:
            data["menu"]["template"] = spec.menu.template_sid
    if spec.replies is not None:
        # Even when empty: importing the file then clears what the desk had.
        data["replies"] = _replies_dict(spec.replies)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _replies_dict(spec: RepliesSpec) -> dict[str, Any]:
    return {
        "canned": [asdict(c) for c in spec.canned],
        "templates": [asdict(t) for t in spec.templates],
    }


def _notifications_dict(spec: NotificationsSpec) -> dict[str, Any]:
    window = format_duration(spec.digest_seconds) if spec.digest_seconds else "off"
    out: dict[str, Any] = {"digest_window": window}
    if spec.template_sid:
        out["alert_template"] = {
            "content_sid": spec.template_sid,
            "variables": dict(spec.template_variables),
        }
    return out


def same_calendar(a: CalendarSpec, b: CalendarSpec) -> bool:
    """The same calendar as the file would say it (wherever each was read from)."""
    return _calendar_dict(a) == _calendar_dict(b)


def match_levels(old: list[EscalationSpec], new: list[EscalationSpec]) -> dict[int, int | None]:
    """Which level of `new` each level of `old` became (numbers from 1), None for one that
    was removed; {} when there are as many levels as before: each keeps its place (new
    delays or people, levels shifted or scaled), and the cards escalating keep their
    instants. Levels are in time order, and so is the answer: with fewer levels, the ones
    removed, or with more, the ones inserted, are those that leave the rest most alike
    (the same people count most, then the same delay; on a tie, the last ones)."""
    if len(new) == len(old):
        return {}
    shorter, longer = (new, old) if len(new) < len(old) else (old, new)

    def alike(a: EscalationSpec, b: EscalationSpec) -> int:
        return 2 * (set(a.to) == set(b.to)) + (a.after_seconds == b.after_seconds)

    # best[i][j]: the most alike the first i of `shorter` can be, each matched in order to
    # one of the first j of `longer`.
    m, n = len(shorter), len(longer)
    best = [[0] * (n + 1) for _ in range(m + 1)]
    for i in range(1, m + 1):
        for j in range(i, n + 1):
            matched = best[i - 1][j - 1] + alike(shorter[i - 1], longer[j - 1])
            best[i][j] = matched if j == i else max(matched, best[i][j - 1])
    pairs, j = {}, n
    for i in range(m, 0, -1):  # as early as a tie allows: the last ones are left over
        while j > i and best[i][j] == best[i][j - 1]:
            j -= 1
        pairs[i], j = j, j - 1
    if len(new) < len(old):  # new level i was old level pairs[i]
        became: dict[int, int | None] = dict.fromkeys(range(1, len(old) + 1))
        became.update({before: after for after, before in pairs.items()})
    else:  # old level i is new level pairs[i]
        became = dict(pairs)
    return became  # levels added at the end too: the cards escalating get them


def same_pipeline(a: PipelineSpec, b: PipelineSpec) -> bool:
    return _pipeline_dict(a) == _pipeline_dict(b)


def same_stage(a: StageSpec, b: StageSpec) -> bool:
    return _stage_dict(a) == _stage_dict(b)


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
    if spec.resolution_seconds:
        out["resolution"] = format_duration(spec.resolution_seconds)
    if spec.resolution_warning_seconds:
        out["resolution_warning"] = format_duration(spec.resolution_warning_seconds)
    if spec.language != "en":
        out["language"] = spec.language
    if spec.texts:
        out["texts"] = dict(spec.texts)
    if spec.keywords:
        out["keywords"] = {command: list(words) for command, words in spec.keywords.items()}
    if spec.reopen_seconds:
        reopen: dict[str, Any] = {"within": format_duration(spec.reopen_seconds)}
        if spec.reopen_stage:
            reopen["stage"] = spec.reopen_stage
        out["reopen"] = reopen
    if spec.automation:
        out["automation"] = {
            event: {"to": rule.to, "from": list(rule.only_from)} if rule.only_from else rule.to
            for event, rule in spec.automation.items()
        }
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
    if spec.pause:
        out["pause"] = True
    if spec.timeout:
        timeout: dict[str, Any] = {"after": format_duration(spec.timeout.after_seconds)}
        timeout["then"] = spec.timeout.then
        if spec.timeout.message:
            timeout["message"] = spec.timeout.message
        out["timeout"] = timeout
    if spec.reassign:
        out["reassign"] = spec.reassign
    return out
