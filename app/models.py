"""Domain objects, as repositories return them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class User:
    id: int
    name: str | None
    email: str | None
    created_at: datetime


@dataclass(frozen=True)
class Mood:
    name: str
    eyes: str
    tongue: str
    user_defined: bool


@dataclass(frozen=True)
class Line:
    id: int
    animal: str
    think: bool
    mood: Mood
    text: str
    created_at: datetime


@dataclass(frozen=True)
class Conversation:
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
