"""Durations as people read them."""

from __future__ import annotations


def humanize(seconds: float) -> str:
    """'45s', '3m 05s', '2h 07m', '3d 4h' — the two largest units, never negative.

    static/queue.js renders the live clocks the same way; change both together.
    """
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def spoken(seconds: float) -> str:
    """'2 minutes', '1 hour 30 minutes', '45 seconds': the two largest units, in words."""
    total = max(0, int(round(seconds)))
    parts = []
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        count, total = divmod(total, size)
        if count:
            parts.append(f"{count} {unit}{'' if count == 1 else 's'}")
    return " ".join(parts[:2]) or "0 seconds"
