"""Events as the domain sees them: the types, one event, a page of them. No I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

TYPES = ("user.updated", "conversation.created", "conversation.updated",
         "conversation.deleted", "line.created", "line.deleted", "mood.created",
         "mood.updated", "mood.deleted")
# The types an event about a conversation (or one of its lines) can have.
CONVERSATION_TYPES = tuple(t for t in TYPES if t.split(".")[0] in ("conversation", "line"))

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def from_micros(value: int) -> datetime:
    """A stored timestamp (whole microseconds since the epoch) as a datetime."""
    return _EPOCH + timedelta(microseconds=value)


@dataclass(frozen=True, slots=True)
class Event:
    user_id: int
    seq: int
    type: str
    conversation: int | None  # the conversation's rid
    created_at: datetime
    data: list[Any]  # the object's stored fields, in the order the write stored them


@dataclass(frozen=True, slots=True)
class EventPage:
    user_exists: bool
    cursor_state: str  # "none" (no cursor), "ok", "missing", "expired"
    events: list[Event]
    has_more: bool
    head_seq: int = 0  # the user's last event number in the page's snapshot (0: none yet)
