"""Domain objects, as repositories return them.

Named tuples rather than frozen dataclasses: just as immutable and read by
attribute, and a read of a conversation builds 21 of them per request, where
a frozen dataclass's __init__ costs several times a tuple's.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple


class User(NamedTuple):
    id: int
    name: str | None
    email: str | None
    created_at: datetime


class Mood(NamedTuple):
    name: str
    eyes: str
    tongue: str
    user_defined: bool


class Line(NamedTuple):
    id: int
    animal: str
    think: bool
    mood: Mood
    text: str
    created_at: datetime


class NewLine(NamedTuple):
    """A line's parameters before it is stored: the mood is still a name, as given."""

    animal: str
    think: bool
    mood: str
    text: str


class Conversation(NamedTuple):
    id: int
    heading: str
    created_at: datetime
    lines: tuple[Line, ...] | None = None  # None when listed without lines


BUILTIN_MOODS: tuple[Mood, ...] = (
    Mood("default", "oo", "  ", False),
    Mood("borg", "==", "  ", False),
    Mood("dead", "xx", "U ", False),
    Mood("greedy", "$$", "  ", False),
    Mood("stoned", "**", "U ", False),
    Mood("tired", "--", "  ", False),
    Mood("wired", "OO", "  ", False),
    Mood("young", "..", "  ", False),
)
BUILTIN_MOOD_NAMES = {m.name for m in BUILTIN_MOODS}
BUILTIN_MOODS_BY_NAME = {m.name: m for m in BUILTIN_MOODS}
