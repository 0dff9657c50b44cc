"""Live streams: GET /events/stream, the user's events as Server-Sent Events.

Through Pushpin (a valid Grip-Sig) the answer is the replay plus hold instructions and
the thread is free at once; without it SayPI streams itself, bounded in time and number
per worker. docs/streams.md explains the channels, prev-ids and recovery links.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from flask import Response, request

from app.api.events import EVENT_OUT, event_id, event_json, parse_event_id, sample_event
from app.cowsay.cache import Renderer
from app.domain import ids
from app.domain.events import CONVERSATION_TYPES, Event
from app.domain.pages import Page
from app.domain.repositories import Events
from app.http.auth import current_user
from app.http.doc import Component, Doc, Success
from app.http.errors import (
    AuthInvalid,
    InvalidParams,
    NotFound,
    ParamProblem,
    ServiceUnavailable,
)
from app.http.grip import Grip, control_channel, conversation_channel, last_ids, user_channel
from app.http.routing import Handler
from app.store.db import DatabaseUnavailable

EVENT_STREAM = "text/event-stream"
PAGE = 200  # events per read of the log
REPLAY_MAX = 2000  # events one GRIP answer replays; Pushpin fetches the rest at once
RETRY_MS = (1000, 5000)  # the `retry:` hint, drawn per stream: reconnects spread out
LINK_TIMEOUT_SECONDS = 300  # Pushpin asks the recovery link after this long anyway
LINK_PATH = "/events/stream/next"


def sse_message(event: Event, renderer: Renderer) -> str:
    body = json.dumps(event_json(event, renderer), separators=(",", ":"), ensure_ascii=False)
    return f"id: {event_id(event.user_id, event.seq)}\nevent: {event.type}\ndata: {body}\n\n"


def reset_message(user_id: int, head_seq: int, hours: int) -> str:
    """The one `reset` event of a stream resumed after an event older than the retention."""
    body = json.dumps({"type": "reset", "message": (
        f"The stream resumed after an event older than the {hours}-hour event retention: "
        "refetch the objects you keep; events follow from here.")}, separators=(",", ":"))
    return f"id: {event_id(user_id, head_seq)}\nevent: reset\ndata: {body}\n\n"


def retry_hint() -> str:
    return f"retry: {random.randint(*RETRY_MS)}\n\n"


def parse_stream_id(raw: str, user_id: int) -> int | None:
    """The number of one of the user's event ids; 0 for the id of "before any event"."""
    if raw == event_id(user_id, 0):
        return 0
    return parse_event_id(raw, user_id)


@dataclass(frozen=True, slots=True)
class Replay:
    messages: list[str]
    position: int  # the user's event number the stream has reached (a resume cursor)
    channel_seq: int  # the last event of the stream's channel at or before `position`
    complete: bool  # False: REPLAY_MAX reached, more events wait


class StreamSlots:
    """The streams one worker serves itself: at most `limit` at once, each until its deadline.
    `on_change` hears the number open (the metric)."""

    def __init__(self, limit: int, on_change: Callable[[int], None] | None = None):
        self.limit = limit
        self._deadlines: dict[int, float] = {}
        self._numbers = iter(range(1, 2**62))
        self._lock = threading.Lock()
        self._on_change = on_change

    def take(self, seconds: float) -> int | None:
        with self._lock:
            if len(self._deadlines) >= self.limit:
                return None
            slot = next(self._numbers)
            self._deadlines[slot] = time.monotonic() + seconds
            count = len(self._deadlines)
        if self._on_change is not None:
            self._on_change(count)
        return slot

    def release(self, slot: int) -> None:
        with self._lock:
            if self._deadlines.pop(slot, None) is None:
                return
            count = len(self._deadlines)
        if self._on_change is not None:
            self._on_change(count)

    def seconds_to_free(self) -> int:
        """Whole seconds until the first open stream ends (at least 1)."""
        with self._lock:
            first = min(self._deadlines.values(), default=time.monotonic())
        return max(1, math.ceil(first - time.monotonic()))


@dataclass(frozen=True, slots=True)
class StreamSettings:
    heartbeat_seconds: float
    direct_seconds: float
    poll_seconds: float
    retention_hours: int


class _Log:
    """One stream's reads of the log: its user, its conversation filter."""

    def __init__(self, events: Events, renderer: Renderer, user: int, conversation: int | None,
                 hours: int):
        self.events, self.renderer, self.user, self.conversation = \
            events, renderer, user, conversation
        self.types = CONVERSATION_TYPES if conversation is not None else None
        self.hours = hours

    def channel_seq(self, upto: int) -> int:
        if self.conversation is None:
            return upto
        return self.events.last_in_conversation(self.user, self.conversation, upto)

    def replay(self, after: int | None, cap: int, cursor_param: str) -> Replay:
        """The events after `after` (None: none, from now on), or a reset if it has expired."""
        if after is None:
            head = self.events.head(self.user)
            if head is None:
                raise AuthInvalid()
            return Replay([], head, self.channel_seq(head), True)
        messages: list[str] = []
        cursor, first = after, True
        while True:
            page = self.events.list(self.user, Page(limit=PAGE), cursor or None, self.types,
                                    self.conversation)
            if not page.user_exists:
                raise AuthInvalid()
            if first and page.cursor_state == "missing":
                raise InvalidParams([ParamProblem((cursor_param,),
                                                  "must be one of your event ids")])
            if first and page.cursor_state == "expired":
                head = page.head_seq
                return Replay([reset_message(self.user, head, self.hours)], head,
                              self.channel_seq(head), True)
            first = False
            messages.extend(sse_message(e, self.renderer) for e in page.events)
            if not page.has_more:
                if page.events:
                    channel = page.head_seq if self.conversation is None else page.events[-1].seq
                else:
                    channel = self.channel_seq(page.head_seq)
                return Replay(messages, max(page.head_seq, cursor), channel, True)
            cursor = page.events[-1].seq
            if len(messages) >= cap:
                return Replay(messages, cursor, cursor, False)

    def poll(self, cursor: int) -> tuple[list[str], int, bool] | None:
        """Events after `cursor`: (messages, the new cursor, more at once); None: user gone."""
        page = self.events.list(self.user, Page(limit=PAGE), cursor or None, self.types,
                                self.conversation)
        if not page.user_exists:
            return None
        messages = [sse_message(e, self.renderer) for e in page.events]
        if page.has_more:
            return messages, page.events[-1].seq, True
        return messages, max(cursor, page.head_seq), False


def _conversation_param() -> int | None:
    raw = request.args.get("conversation")
    if raw is None:
        return None
    conversation = ids.decode(ids.CONVERSATION, raw)
    if conversation is None:
        raise InvalidParams([ParamProblem(("conversation",), "must be a conversation id "
                                                             "(`cv_` and 16 hex digits)")])
    return conversation


def _cursor_param(user: int) -> tuple[int | None, str]:
    param, raw = "Last-Event-ID", request.headers.get("Last-Event-ID")
    if raw is None or not raw.strip():
        param, raw = "starting_after", request.args.get("starting_after")
    if raw is None:
        return None, param
    seq = parse_stream_id(raw.strip(), user)
    if seq is None:
        raise InvalidParams([ParamProblem((param,), "must be one of your event ids")])
    return seq, param


def _grip_answer(grip: Grip, settings: StreamSettings, user: int, conversation: int | None,
                 replay: Replay, first: bool) -> Response:
    """The replay with Pushpin's hold instructions: the stream's channel with the id of its
    last event (prev-id), the user's control channel, the recovery link, the keep-alive."""
    channel = (user_channel(user) if conversation is None
               else conversation_channel(user, conversation))
    prev = event_id(user, replay.channel_seq)
    timeout = LINK_TIMEOUT_SECONDS if replay.complete else 1
    body = "".join(replay.messages)
    if first:
        body = retry_hint() + (body or f"id: {event_id(user, replay.position)}\n\n")
    heartbeat = max(1, round(settings.heartbeat_seconds))
    return Response(body, 200, {
        "Content-Type": EVENT_STREAM,
        "Grip-Hold": "stream",
        "Grip-Channel": f"{channel}; prev-id={prev}, {control_channel(user)}",
        "Grip-Link": f"<{LINK_PATH}?link={grip.link_token(user, conversation)}>; rel=next; "
                     f"timeout={timeout}",
        "Grip-Keep-Alive": f":\\n\\n; format=cstring; timeout={heartbeat}",
    })


class DirectStream:
    """A stream SayPI serves itself: the replay, then the log polled with short reads (no
    connection held between them), heartbeats, until the deadline or the user is gone."""

    def __init__(self, log: _Log, first: str, cursor: int, settings: StreamSettings,
                 slots: StreamSlots, slot: int):
        self.log, self.first, self.cursor, self.settings = log, first, cursor, settings
        self.slots, self.slot = slots, slot
        self.deadline = time.monotonic() + settings.direct_seconds

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield self.first.encode()
            beat = time.monotonic() + self.settings.heartbeat_seconds
            while True:
                now = time.monotonic()
                if now >= self.deadline:
                    return
                try:
                    result = self.log.poll(self.cursor)
                except DatabaseUnavailable:
                    return  # the client resumes with its Last-Event-ID
                if result is None:
                    return  # the user was deleted
                messages, self.cursor, more = result
                if messages:
                    yield "".join(messages).encode()
                    beat = now + self.settings.heartbeat_seconds
                elif now >= beat:
                    yield b": heartbeat\n\n"
                    beat = now + self.settings.heartbeat_seconds
                if not more:
                    time.sleep(max(0.0, min(self.settings.poll_seconds, self.deadline - now)))
        finally:
            self.close()

    def close(self) -> None:
        self.slots.release(self.slot)


def handle_event_stream(events: Events, renderer: Renderer, grip: Grip, slots: StreamSlots,
                        settings: StreamSettings) -> Handler:
    """GET /events/stream: your events as Server-Sent Events, as they commit."""

    def handler() -> Response:
        user = current_user()
        conversation = _conversation_param()
        after, cursor_param = _cursor_param(user)
        if conversation is not None and not events.owns_conversation(user, conversation):
            raise NotFound()
        log = _Log(events, renderer, user, conversation, settings.retention_hours)
        if grip.verified(request.headers.get("Grip-Sig")):
            return _grip_answer(grip, settings, user, conversation,
                                log.replay(after, REPLAY_MAX, cursor_param), first=True)
        slot = slots.take(settings.direct_seconds)
        if slot is None:
            raise ServiceUnavailable(retry_after=slots.seconds_to_free())
        try:
            replay = log.replay(after, PAGE, cursor_param)
        except BaseException:
            slots.release(slot)
            raise
        first = retry_hint() + ("".join(replay.messages)
                                or f"id: {event_id(user, replay.position)}\n\n")
        stream = DirectStream(log, first, replay.position, settings, slots, slot)
        return Response(stream, 200, {"Content-Type": EVENT_STREAM,
                                      "X-Accel-Buffering": "no"})

    return handler


def handle_stream_link(events: Events, renderer: Renderer, grip: Grip,
                       settings: StreamSettings) -> Handler:
    """GET /events/stream/next: Pushpin's recovery of a held stream (Grip-Sig and the link's
    MAC required): the events after the Grip-Last id, with fresh hold instructions."""

    def handler() -> Response:
        if not grip.verified(request.headers.get("Grip-Sig")):
            raise NotFound()
        stream = grip.link_stream(request.args.get("link"))
        if stream is None:
            raise NotFound()
        user, conversation = stream
        channel = (user_channel(user) if conversation is None
                   else conversation_channel(user, conversation))
        last = last_ids(request.headers.getlist("Grip-Last")).get(channel)
        after = parse_stream_id(last, user) if last is not None else None
        if after is None:
            raise NotFound()
        if events.head(user) is None:
            raise NotFound()  # the user was deleted: Pushpin ends the stream
        if conversation is not None and not events.owns_conversation(user, conversation):
            raise NotFound()  # the conversation was deleted
        log = _Log(events, renderer, user, conversation, settings.retention_hours)
        return _grip_answer(grip, settings, user, conversation,
                            log.replay(after, REPLAY_MAX, "Grip-Last"), first=False)

    return handler


# --- descriptions for the OpenAPI document (app/openapi) ----------------------------------

def _sample_stream(renderer: Renderer) -> str:
    sample: dict[str, Any] = sample_event(renderer)
    return (f"retry: 3000\n\nid: {sample['id']}\nevent: {sample['type']}\n"
            f"data: {json.dumps(sample, separators=(',', ':'))}\n\n: heartbeat\n\n")


EVENT_STREAM_OUT = Component("EventStream", {
    "type": "string",
    "description": "Server-Sent Events: each message `id: <event id>`, `event: <type>`, "
                   "`data: <the event object as JSON>` (EventOut); comment heartbeats; a "
                   "`retry:` hint; one `reset` event when the stream resumes after an event "
                   "older than the retention.",
}, _sample_stream, requires=(EVENT_OUT,), media_type=EVENT_STREAM)

STREAM_QUERY: dict[str, dict[str, Any]] = {
    "stream_conversation": {
        "name": "conversation", "in": "query", "required": False,
        "description": "Only the events of this conversation (`cv_...`): its own and its "
                       "lines'. Another user's, or a deleted one, is `404`.",
        "schema": {"type": "string", "pattern": f"^{ids.CONVERSATION}_[0-9a-f]{{16}}$"}},
    "stream_starting_after": {
        "name": "starting_after", "in": "query", "required": False,
        "description": "Resume right after this event id (the `Last-Event-ID` header wins).",
        "schema": {"type": "string", "pattern": "^evt_[0-9a-f]{32}$"}},
    "last_event_id": {
        "name": "Last-Event-ID", "in": "header", "required": False,
        "description": "Resume right after this event id: no gap, no duplicate.",
        "schema": {"type": "string", "pattern": "^evt_[0-9a-f]{32}$"}},
}

EVENT_STREAM_DOC = Doc(
    handle_event_stream, "Events", query=STREAM_QUERY,
    errors=(InvalidParams, ServiceUnavailable, NotFound),
    success=(Success(200, "Your events as they commit, after the replay of those after "
                          "`Last-Event-ID`.", EVENT_STREAM_OUT),),
    notes="Without `Last-Event-ID` or `starting_after` the stream starts with the events "
          "committed from now on; its first message carries the id to resume from. Events "
          "arrive in the order they committed, each once. Heartbeat comments come every "
          "`STREAM_HEARTBEAT_SECONDS` (this server: {heartbeat} s). Behind the GRIP proxy "
          "(Pushpin) the proxy holds the connection; served directly, a stream lasts at most "
          "`STREAM_DIRECT_SECONDS` ({direct} s; then resume with `Last-Event-ID`), and a "
          "worker serves at most `STREAM_DIRECT_MAX` at once (more: `503` with "
          "`Retry-After`). A deleted user's streams end. Authenticate with the bearer header "
          "(`fetch` can send it; `EventSource` cannot).")
