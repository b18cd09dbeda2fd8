"""Pipeline configuration as YAML: parse and check a file, naming the line of every mistake."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

DURATION_RE = re.compile(r"^(?:(\d+)d)?\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?$")
KEY_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class PipelineFileError(ValueError):
    """The file cannot be loaded; `problems` lists each mistake with its line and field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class StageSpec:
    key: str
    name: str
    sla_seconds: int | None = None
    warning_seconds: int | None = None
    alert: list[str] = field(default_factory=list)
    line: int = 0


@dataclass
class PipelineSpec:
    key: str
    name: str
    default: bool = False
    stages: list[StageSpec] = field(default_factory=list)
    line: int = 0


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


def parse(source: str) -> list[PipelineSpec]:
    """Read and check a pipeline file; PipelineFileError lists every problem found."""
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
    top = reader.mapping(root, "file", {"pipelines"})
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
    return specs


def _pipeline(reader: _Reader, node: yaml.Node, path: str) -> PipelineSpec:
    fields = reader.mapping(node, path, {"key", "name", "default", "stages"})
    spec = PipelineSpec(
        key=reader.text(fields, "key", path, node, KEY_RE),
        name=reader.text(fields, "name", path, node),
        default=reader.flag(fields, "default", path),
        line=node.start_mark.line + 1,
    )
    stage_nodes = reader.sequence(fields.get("stages"), f"{path}.stages")
    if not stage_nodes:
        reader.fail(node, f"{path}.stages", "at least one stage is required")
    spec.stages = [_stage(reader, n, f"{path}.stages[{i}]") for i, n in enumerate(stage_nodes)]
    _check_unique(reader, [(s.key, s.line) for s in spec.stages], f"{path}.stages", "stage key")
    return spec


def _stage(reader: _Reader, node: yaml.Node, path: str) -> StageSpec:
    fields = reader.mapping(node, path, {"key", "name", "sla", "warning", "alert"})
    spec = StageSpec(
        key=reader.text(fields, "key", path, node, KEY_RE),
        name=reader.text(fields, "name", path, node),
        sla_seconds=reader.duration(fields, "sla", path),
        warning_seconds=reader.duration(fields, "warning", path),
        line=node.start_mark.line + 1,
    )
    if spec.warning_seconds and not spec.sla_seconds:
        reader.fail(fields["warning"], f"{path}.warning", "a warning needs an `sla` to warn before")
    elif spec.warning_seconds and spec.sla_seconds and spec.warning_seconds >= spec.sla_seconds:
        reader.fail(fields["warning"], f"{path}.warning", "must be shorter than the sla")
    for i, item in enumerate(reader.sequence(fields.get("alert"), f"{path}.alert")):
        if isinstance(item, yaml.ScalarNode) and "@" in str(item.value):
            spec.alert.append(str(item.value).strip().lower())
        else:
            reader.fail(item, f"{path}.alert[{i}]", "expected a staff member's email")
    return spec


def _check_unique(reader: _Reader, keyed: list[tuple[str, int]], path: str, what: str) -> None:
    seen: set[str] = set()
    for key, line in keyed:
        if key and key in seen:
            reader.problems.append(f"line {line}: {path}: {what} {key!r} is used twice")
        seen.add(key)


def dump(specs: list[PipelineSpec]) -> str:
    """The YAML text that `parse` reads back as the same pipelines."""
    data: dict[str, Any] = {"pipelines": [_pipeline_dict(p) for p in specs]}
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _pipeline_dict(spec: PipelineSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"key": spec.key, "name": spec.name}
    if spec.default:
        out["default"] = True
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
    return out
