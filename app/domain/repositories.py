"""What the handlers need from storage, as typing.Protocol interfaces.

Implemented by the PostgreSQL repositories and by the in-process tests' fakes, so a fake
type-checks against the real thing. A `uow` argument joins a call to a unit of work (one
transaction several calls share); without one a call runs on its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from app.domain.events import Event, EventPage
from app.domain.models import Conversation, Line, Mood, NewLine, User
from app.domain.pages import KeysetResult, Page
from app.domain.unit_of_work import UnitOfWork


class Users(Protocol):
    def create(self, name: str | None, email: str | None,
               uow: UnitOfWork | None = None) -> User: ...

    def get(self, user_id: int) -> User | None: ...

    def exists(self, user_id: int) -> bool: ...

    def update(self, user_id: int, changes: Mapping[str, str | None]) -> User | None: ...

    def delete(self, user_id: int) -> bool: ...

    def watch_deletions(self, on_listening: Callable[[], None],
                        on_deleted: Callable[[int], None], stop: threading.Event) -> None: ...


class Moods(Protocol):
    def list(self, user_id: int, page: Page) -> KeysetResult: ...

    def get(self, user_id: int, name: str) -> Mood | None: ...

    def upsert(self, user_id: int, name: str, eyes: str | None, tongue: str | None,
               cap: int) -> tuple[Mood, bool]: ...

    def delete(self, user_id: int, name: str) -> bool: ...


class Conversations(Protocol):
    def create(self, user_id: int, heading: str, cap: int,
               uow: UnitOfWork | None = None) -> Conversation: ...

    def create_with_lines(self, user_id: int, heading: str, cap: int, lines: Sequence[NewLine],
                          line_cap: int, uow: UnitOfWork | None = None) -> Conversation: ...

    def get(self, user_id: int, rid: int) -> Conversation | None: ...

    def list(self, user_id: int, page: Page) -> KeysetResult: ...

    def update_heading(self, user_id: int, rid: int, heading: str) -> Conversation | None: ...

    def delete(self, user_id: int, rid: int) -> bool: ...


class Lines(Protocol):
    def create(self, user_id: int, conversation: int, animal: str, think: bool, mood: str,
               text: str, cap: int, uow: UnitOfWork | None = None) -> Line: ...

    def create_many(self, user_id: int, conversation: int, lines: Sequence[NewLine], cap: int,
                    uow: UnitOfWork | None = None) -> list[Line]: ...

    def mood_exists(self, user_id: int, mood: str, uow: UnitOfWork | None = None) -> bool: ...

    def known_moods(self, user_id: int, names: Sequence[str],
                    uow: UnitOfWork | None = None) -> set[str]: ...

    def get(self, user_id: int, conversation: int, rid: int) -> Line | None: ...

    def list(self, user_id: int, conversation: int, page: Page) -> KeysetResult: ...

    def delete(self, user_id: int, conversation: int, rid: int) -> bool: ...


class SlowQueries(Protocol):
    def sleep(self, seconds: float) -> None: ...


class Events(Protocol):
    """The event log's reads (routed like every read of the user) and its retention."""

    retention_hours: int

    def list(self, user_id: int, page: Page, cursor_seq: int | None,
             types: Sequence[str] | None, conversation: int | None) -> EventPage: ...

    def get(self, user_id: int, seq: int) -> Event | None: ...

    def head(self, user_id: int) -> int | None: ...

    def owns_conversation(self, user_id: int, conversation: int) -> bool: ...

    def last_in_conversation(self, user_id: int, conversation: int, upto_seq: int) -> int: ...

    def purge_expired(self) -> int: ...

    def oldest_age(self) -> float | None: ...
