"""What the desk says to customers on its own (pure text decisions)."""

from __future__ import annotations

from .durations import spoken


def acknowledgement(
    name: str | None, pipeline_name: str, first_response_seconds: int | None
) -> str:
    """The immediate reply to a new conversation, honest about the promised wait."""
    greeting = f"Hi {name}!" if name else "Hi!"
    promise = (
        f" A person from our {pipeline_name} team will answer within "
        f"{spoken(first_response_seconds)}."
        if first_response_seconds
        else f" A person from our {pipeline_name} team will answer as soon as possible."
    )
    return f"{greeting} Thanks for your message, it has reached us.{promise}"
