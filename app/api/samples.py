"""The objects the OpenAPI document's examples show: one user, mood, line and conversation."""

from __future__ import annotations

from datetime import UTC, datetime

from app.domain.models import BUILTIN_MOODS, Conversation, Line, Mood, User

CREATED = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
USER = User(0x3A1F0C6E2B9D4857, "Ada", "ada@example.com", CREATED)
TIRED = next(m for m in BUILTIN_MOODS if m.name == "tired")
SLEEPY = Mood("sleepy", "-.", "U ", True)
LINE = Line(0x5E2A9C7F1D3B0846, "default", False, TIRED, "Moo.", CREATED)
CONVERSATION = Conversation(0x0B6D2F9E4C8A1735, "Morning on the farm", CREATED, (LINE,))
