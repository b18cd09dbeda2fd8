"""Reading numbers people (or tampered forms and links) send."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from werkzeug.routing import IntegerConverter, Map

# Rows a settings form may carry (escalation levels, opening-hour groups): far more than a
# person fills in, and few enough to render.
MAX_ROWS = 50
# Row ids in an integer column (PostgreSQL's int4).
MAX_ID = 2**31 - 1


def count(raw: str | None, limit: int) -> int | None:
    """`raw` as a whole number from 0 to `limit`, or None: only ASCII digits count (str.isdigit
    also takes '²' and other scripts' digits), and no more than `limit` of them."""
    raw = (raw or "").strip()
    if not (raw.isascii() and raw.isdigit()) or len(raw) > len(str(limit)):
        return None
    value = int(raw)
    return value if value <= limit else None


def given(args: Mapping[str, str], names: Sequence[str]) -> dict[str, str]:
    """Those of `names` a request gives (not empty): links are built from these, never from
    whatever other argument came with it."""
    return {name: value for name in names if (value := args.get(name, ""))}


class RowId(IntegerConverter):
    """`<int:…>` in routes: a row id the database can hold (PostgreSQL's integer); a larger
    number matches no route (404), where the database would refuse it (a 500 or 503)."""

    def __init__(self, map: Map, *args: Any, max: int = MAX_ID, **kwargs: Any) -> None:
        super().__init__(map, *args, max=max, **kwargs)
