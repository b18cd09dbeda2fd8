"""Reading numbers people (or tampered forms and links) send."""

from __future__ import annotations

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
