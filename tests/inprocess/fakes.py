"""In-memory stand-ins for the repositories, and a Deps built on them.

They implement the interfaces of app/domain/repositories.py with plain Python
data, so `new_server(fake_deps())` is the real Flask app, envelope and
handlers without PostgreSQL or gunicorn: the in-process test layer
(tests/inprocess/test_handlers.py). They keep the behaviour handlers depend on (caps,
ownership, keyset pages with their scope and cursor answers, idempotency
locks) and nothing else; SQL itself is tested end to end.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from app.config import Config
from app.cowsay import CowLibrary, cow_search_path
from app.deps import Deps, build_deps
from app.domain.errors import LimitReached
from app.domain.events import EventPage
from app.domain.health import CheckResult
from app.domain.models import BUILTIN_MOODS, Conversation, Line, Mood, User
from app.domain.pages import KeysetResult, Page
from app.domain.unit_of_work import UnitOfWork
from app.domain.webhooks import Delivery, Endpoint
from app.http.ratelimit import MemoryStore
from app.ops.logs import new_logger

SECRET = "fake-secret-0123456789abcdef"
_NUMBERS = itertools.count(0x1000)
_CLOCK = itertools.count()


def _now() -> datetime:
    # Distinct, increasing timestamps: objects sort by creation as in PostgreSQL.
    return datetime(2026, 1, 1, tzinfo=UTC).replace(microsecond=next(_CLOCK) % 1_000_000)


def _lines(convo: Conversation) -> tuple[Line, ...]:
    return convo.lines or ()  # stored conversations always carry theirs


def _page(items: list, key: Callable, page: Page, cursor_key: Callable | None = None,
          scope_exists: bool = True) -> KeysetResult:
    """A keyset page over `items` (oldest first), answering like app/store/keyset.py does."""
    position = None
    if page.cursor is not None:
        matches = [i for i, item in enumerate(items) if (cursor_key or key)(item) == page.cursor]
        if not matches:
            return KeysetResult(scope_exists, False, [], False)
        position = matches[0]
    if page.backward:
        before = items[:position] if position is not None else items
        rows = before[-page.limit:]
        has_more = len(before) > page.limit
    else:
        after = items[position + 1:] if position is not None else items
        rows = after[:page.limit]
        has_more = len(after) > page.limit
    return KeysetResult(scope_exists, position is not None, rows, has_more)


class FakeUsers:
    def __init__(self) -> None:
        self.rows: dict[int, User] = {}

    def create(self, name, email, uow: UnitOfWork | None = None) -> User:
        from app.domain.errors import EmailTaken

        if email is not None and any((u.email or "").lower() == email.lower()
                                     for u in self.rows.values()):
            raise EmailTaken(email)
        user = User(next(_NUMBERS), name, email, _now())
        self.rows[user.id] = user
        return user

    def get(self, user_id: int) -> User | None:
        return self.rows.get(user_id)

    def exists(self, user_id: int) -> bool:
        return user_id in self.rows

    def update(self, user_id: int, changes: Mapping[str, str | None]) -> User | None:
        user = self.rows.get(user_id)
        if user is None:
            return None
        fields: dict[str, Any] = dict(changes)
        user = user._replace(**fields)
        self.rows[user_id] = user
        return user

    def delete(self, user_id: int) -> bool:
        return self.rows.pop(user_id, None) is not None

    def watch_deletions(self, on_listening, on_deleted, stop: threading.Event) -> None:
        stop.wait()


class FakeMoods:
    def __init__(self, users: FakeUsers) -> None:
        self.users = users
        self.owned: dict[int, list[Mood]] = {}
        self.used: dict[tuple[int, str], int] = {}  # (user, lower name) -> lines using it

    def visible(self, user_id: int) -> list[Mood]:
        return [*BUILTIN_MOODS, *self.owned.get(user_id, [])]

    def list(self, user_id: int, page: Page) -> KeysetResult:
        return _page(self.visible(user_id), lambda m: m.name.lower(),
                     Page(page.limit, *(c.lower() if c else c for c in
                                        (page.starting_after, page.ending_before))),
                     scope_exists=self.users.exists(user_id))

    def get(self, user_id: int, name: str) -> Mood | None:
        if not self.users.exists(user_id):
            return None
        return next((m for m in self.visible(user_id) if m.name.lower() == name.lower()), None)

    def upsert(self, user_id, name, eyes, tongue, cap) -> tuple[Mood, bool]:
        from app.domain.errors import LimitReached, UserGone

        if not self.users.exists(user_id):
            raise UserGone()
        mine = self.owned.setdefault(user_id, [])
        for i, mood in enumerate(mine):
            if mood.name.lower() == name.lower():
                mine[i] = mood._replace(eyes=eyes or mood.eyes, tongue=tongue or mood.tongue)
                return mine[i], False
        if len(mine) >= cap:
            raise LimitReached(LimitReached.MOODS, cap)
        mood = Mood(name, eyes or "oo", tongue or "  ", True)
        mine.append(mood)
        return mood, True

    def delete(self, user_id: int, name: str) -> bool:
        from app.domain.errors import MoodInUse

        mine = self.owned.get(user_id, [])
        for mood in mine:
            if mood.name.lower() == name.lower():
                in_use = self.used.get((user_id, name.lower()), 0)
                if in_use:
                    raise MoodInUse(in_use)
                mine.remove(mood)
                return True
        return False


class FakeConversations:
    def __init__(self, users: FakeUsers) -> None:
        self.users = users
        self.rows: dict[int, tuple[int, Conversation]] = {}  # rid -> (owner, conversation)
        self.line_store: FakeLines | None = None  # set by FakeLines, for create_with_lines

    def mine(self, user_id: int) -> list[Conversation]:
        return [c for owner, c in self.rows.values() if owner == user_id]

    def create(self, user_id, heading, cap, uow: UnitOfWork | None = None) -> Conversation:
        from app.domain.errors import LimitReached, UserGone

        if not self.users.exists(user_id):
            raise UserGone()
        if len(self.mine(user_id)) >= cap:
            raise LimitReached(LimitReached.CONVERSATIONS, cap)
        convo = Conversation(next(_NUMBERS), heading, _now(), ())
        self.rows[convo.id] = (user_id, convo)
        return convo

    def create_with_lines(self, user_id, heading, cap, lines, line_cap,
                          uow: UnitOfWork | None = None) -> Conversation:
        """create() and then create_many(), undone if the lines are refused."""
        from app.domain.errors import LimitReached, MoodMissing

        assert self.line_store is not None, "FakeLines sets it"
        missing = self.line_store.missing_moods(user_id, lines)
        if self.users.exists(user_id) and missing:
            raise MoodMissing(missing)
        if len(lines) > line_cap:
            raise LimitReached(LimitReached.LINES, line_cap)
        convo = self.create(user_id, heading, cap, uow)
        self.line_store.create_many(user_id, convo.id, lines, line_cap, uow)
        made = self.get(user_id, convo.id)
        assert made is not None
        return made

    def get(self, user_id: int, rid: int) -> Conversation | None:
        owner, convo = self.rows.get(rid, (None, None))
        return convo if owner == user_id else None

    def list(self, user_id: int, page: Page) -> KeysetResult:
        from app.domain import ids

        items = [c._replace(lines=None) for c in self.mine(user_id)]
        return _page(items, lambda c: ids.encode(ids.CONVERSATION, c.id), page,
                     scope_exists=self.users.exists(user_id))

    def update_heading(self, user_id: int, rid: int, heading: str) -> Conversation | None:
        convo = self.get(user_id, rid)
        if convo is None:
            return None
        self.rows[rid] = (user_id, convo._replace(heading=heading))
        return self.rows[rid][1]

    def delete(self, user_id: int, rid: int) -> bool:
        return self.get(user_id, rid) is not None and self.rows.pop(rid) is not None


class FakeLines:
    def __init__(self, users: FakeUsers, moods: FakeMoods,
                 conversations: FakeConversations) -> None:
        self.users, self.moods, self.conversations = users, moods, conversations
        conversations.line_store = self  # create_with_lines adds lines through this
        self.batches = 0  # create_many calls (each one statement in PostgreSQL)

    def missing_moods(self, user_id: int, lines) -> tuple[int, ...]:
        return tuple(i for i, line in enumerate(lines)
                     if self.moods.get(user_id, line.mood) is None)

    def create_many(self, user_id, conversation, lines, cap,
                    uow: UnitOfWork | None = None) -> list[Line]:
        """All of `lines` or none: every refusal is decided before anything is added."""
        from app.domain.errors import ConversationMissing, LimitReached, MoodMissing, UserGone

        self.batches += 1
        if not self.users.exists(user_id):
            raise UserGone()
        convo = self.conversations.get(user_id, conversation)
        if convo is None:
            raise ConversationMissing()
        missing = self.missing_moods(user_id, lines)
        if missing:
            raise MoodMissing(missing)
        if len(_lines(convo)) + len(lines) > cap:
            raise LimitReached(LimitReached.LINES, cap)
        return [self.create(user_id, conversation, line.animal, line.think, line.mood,
                            line.text, cap, uow) for line in lines]

    def known_moods(self, user_id: int, names, uow: UnitOfWork | None = None) -> set[str]:
        return {name.lower() for name in names if self.moods.get(user_id, name) is not None}

    def create(self, user_id, conversation, animal, think, mood, text, cap,
               uow: UnitOfWork | None = None) -> Line:
        from app.domain.errors import ConversationMissing, LimitReached, MoodMissing, UserGone

        if not self.users.exists(user_id):
            raise UserGone()
        convo = self.conversations.get(user_id, conversation)
        if convo is None:
            raise ConversationMissing()
        found = self.moods.get(user_id, mood)
        if found is None:
            raise MoodMissing()
        if len(_lines(convo)) >= cap:
            raise LimitReached(LimitReached.LINES, cap)
        line = Line(next(_NUMBERS), animal, think, found, text, _now())
        self.conversations.rows[conversation] = (user_id, convo._replace(
            lines=(*_lines(convo), line)))
        if found.user_defined:
            key = (user_id, found.name.lower())
            self.moods.used[key] = self.moods.used.get(key, 0) + 1
        return line

    def mood_exists(self, user_id: int, mood: str, uow: UnitOfWork | None = None) -> bool:
        return self.moods.get(user_id, mood) is not None

    def get(self, user_id: int, conversation: int, rid: int) -> Line | None:
        convo = self.conversations.get(user_id, conversation)
        return next((line for line in _lines(convo) if line.id == rid), None) if convo else None

    def list(self, user_id: int, conversation: int, page: Page) -> KeysetResult:
        from app.domain import ids

        convo = self.conversations.get(user_id, conversation)
        if convo is None:
            return KeysetResult(False, False, [], False)
        return _page(list(_lines(convo)), lambda line: ids.encode(ids.LINE, line.id), page)

    def delete(self, user_id: int, conversation: int, rid: int) -> bool:
        convo = self.conversations.get(user_id, conversation)
        if convo is None or not any(line.id == rid for line in _lines(convo)):
            return False
        self.conversations.rows[conversation] = (user_id, convo._replace(
            lines=tuple(line for line in _lines(convo) if line.id != rid)))
        return True


class FakeIdempotencyKeys:
    """Stored responses by (scope, key); `locked` holds keys another request is running."""

    def __init__(self) -> None:
        self.stored: dict[tuple[str, str], object] = {}
        self.locked: set[tuple[str, str]] = set()

    def try_lock(self, scope: str, key: str, uow: UnitOfWork | None = None) -> bool:
        return (scope, key) not in self.locked

    def find(self, scope: str, key: str, ttl_seconds: int, uow: UnitOfWork | None = None):
        return self.stored.get((scope, key))

    def store(self, scope: str, key: str, response, uow: UnitOfWork | None = None) -> None:
        self.stored[(scope, key)] = response

    def purge_expired(self, ttl_seconds: int, batch: int = 1000) -> int:
        return 0


class FakeUnitOfWork:
    """A unit of work with nothing to commit: the fakes apply every change at once."""


class FakeTransactions:
    """The unit-of-work provider Idempotency asks for: nothing to commit in memory."""

    @contextlib.contextmanager
    def unit_of_work(self) -> Iterator[UnitOfWork]:
        yield FakeUnitOfWork()


_LIBRARY: list[CowLibrary] = []


def cow_library() -> CowLibrary:
    if not _LIBRARY:  # parsing every cow file takes a moment: once per test session
        _LIBRARY.append(CowLibrary.load(cow_search_path(None), logging.getLogger("test")))
    return _LIBRARY[0]


class FakeSlowQueries:
    """The fault-injection routes' slow query, without a database to be slow in."""

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class FakeEvents:
    """An event log that records nothing: the in-process tests exercise the other routes."""

    retention_hours = 720

    def list(self, user_id: int, page: Page, cursor_seq: int | None,
             types: Sequence[str] | None, conversation: int | None) -> EventPage:
        return EventPage(True, "none" if cursor_seq is None else "missing", [], False)

    def get(self, user_id: int, seq: int) -> None:
        return None

    def head(self, user_id: int) -> int | None:
        return 0

    def owns_conversation(self, user_id: int, conversation: int) -> bool:
        return False

    def last_in_conversation(self, user_id: int, conversation: int, upto_seq: int) -> int:
        return 0

    def purge_expired(self) -> int:
        return 0

    def purge_deleted_users(self) -> int:
        return 0

    def oldest_age(self) -> float | None:
        return None


class FakeWebhooks:
    """Webhook endpoints in a dict; no deliveries are ever made (the relay's are e2e)."""

    def __init__(self, users: FakeUsers):
        self.users = users
        self.endpoints: dict[int, tuple[int, Endpoint]] = {}

    def create(self, user_id: int, url: str, events: Sequence[str], description: str | None,
               secret: str, cap: int, uow: UnitOfWork | None = None) -> Endpoint:
        if sum(1 for owner, _ in self.endpoints.values() if owner == user_id) >= cap:
            raise LimitReached(LimitReached.WEBHOOK_ENDPOINTS, cap)
        endpoint = Endpoint(next(_NUMBERS), url, tuple(events), description, False, None,
                            _now())
        self.endpoints[endpoint.id] = (user_id, endpoint)
        return endpoint

    def get(self, user_id: int, rid: int) -> Endpoint | None:
        owner, endpoint = self.endpoints.get(rid, (None, None))
        return endpoint if owner == user_id else None

    def list(self, user_id: int, page: Page) -> KeysetResult:
        mine = [e for owner, e in self.endpoints.values() if owner == user_id]
        return _page(mine, lambda e: f"we_{e.id:016x}", page)

    def update(self, user_id: int, rid: int, changes: Mapping[str, object]
               ) -> Endpoint | None:
        endpoint = self.get(user_id, rid)
        if endpoint is None:
            return None
        fields: dict[str, Any] = dict(changes)
        if "events" in fields:
            fields["events"] = tuple(fields["events"])
        endpoint = endpoint._replace(**fields)
        self.endpoints[rid] = (user_id, endpoint)
        return endpoint

    def delete(self, user_id: int, rid: int) -> bool:
        return self.get(user_id, rid) is not None and self.endpoints.pop(rid) is not None

    def rotate_secret(self, user_id: int, rid: int, secret: str) -> Endpoint | None:
        return self.get(user_id, rid)

    def add_ping(self, user_id: int, rid: int, event_id: str, body: str) -> Delivery | None:
        if self.get(user_id, rid) is None:
            return None
        return Delivery(next(_NUMBERS), event_id, 0, "pending", None, None, None, _now(),
                        _now())

    def deliveries(self, user_id: int, rid: int, page: Page,
                   cursor: int | None) -> KeysetResult:
        return KeysetResult(self.get(user_id, rid) is not None, False, [], False)


def fake_deps(**settings: str) -> Deps:
    """A Deps on in-memory repositories; `settings` are environment variables for Config.

    The same `build_deps` as production, given the parts that would need
    PostgreSQL; no pool is opened.
    """
    env = {"USER_SECRETS": SECRET, "RATE_LIMIT_USER_PER_MINUTE": "0",
           "RATE_LIMIT_IP_PER_MINUTE": "0", **settings}
    config = Config.from_env(env, ["serve"])
    logger = new_logger(io.StringIO(), "WARNING", "json", config.user_secrets,
                        name=f"saypi-fake-{next(_NUMBERS)}")
    users = FakeUsers()
    moods = FakeMoods(users)
    conversations = FakeConversations(users)
    return build_deps(
        config, logger, users=users, moods=moods, conversations=conversations,
        lines=FakeLines(users, moods, conversations), transactions=FakeTransactions(),
        idempotency_keys=FakeIdempotencyKeys(), rate_limit_store=MemoryStore(), redis=None,
        checkers={"fake": lambda: CheckResult("healthy", "in memory")},
        library=cow_library(), slow_queries=FakeSlowQueries(), events=FakeEvents(),
        webhooks=FakeWebhooks(users))
