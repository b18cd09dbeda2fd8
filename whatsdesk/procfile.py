"""The Procfile as the one place the desk's process command lines are written."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path

from .config import PROJECT_ROOT

PROCFILE = PROJECT_ROOT / "Procfile"
_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def read(path: Path = PROCFILE) -> dict[str, str]:
    """Process name → command line, as written."""
    processes = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() and not name.lstrip().startswith("#"):
            processes[name.strip()] = command.strip()
    return processes


def command(name: str, env: Mapping[str, str], path: Path = PROCFILE) -> list[str]:
    """The argv of process `name`, with ${VAR} and ${VAR:-default} taken from `env`."""

    def value(match: re.Match[str]) -> str:
        variable, default = match.group(1), match.group(2)
        if env.get(variable):
            # Quoted so the value stays one argument, as written, whatever it contains.
            return shlex.quote(env[variable])
        if default is None:
            raise KeyError(f"Procfile process {name!r} needs {variable} to be set")
        return default

    return shlex.split(_VARIABLE.sub(value, read(path)[name]))
