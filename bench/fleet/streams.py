"""Event streams through Pushpin during the fleet's phases: each subscriber follows a writing
user's stream, cut at random points and resumed with Last-Event-ID, and must end with
exactly that user's log (no gap, no duplicate), whatever restarts happened meanwhile."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

import httpx

from app.client import Client, SayPIError


@dataclass
class Subscriber:
    token: str
    seed: int
    start: str | None = None  # the id the stream began at
    seen: list[str] = field(default_factory=list)
    connections: int = 0
    failures: int = 0  # connections refused or cut by the other side


class StreamWatch:
    """`per_user` subscribers for each token, through `pushpin_url`; the log is read back
    through `api_url` at the end."""

    def __init__(self, pushpin_url: str, api_url: str, tokens: list[str], per_user: int):
        self.pushpin_url, self.api_url = pushpin_url, api_url
        self.subscribers = [Subscriber(token, n * 100 + k) for n, token in enumerate(tokens)
                            for k in range(per_user)]
        self._stop = threading.Event()
        self._final: dict[str, str] = {}  # token -> the last id of the user's log
        self._threads = [threading.Thread(target=self._follow, args=(s,), daemon=True)
                         for s in self.subscribers]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        deadline = time.monotonic() + 30
        while any(s.start is None for s in self.subscribers) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _done(self, subscriber: Subscriber, last: str | None) -> bool:
        final = self._final.get(subscriber.token)
        return self._stop.is_set() and (final is None or last == final)

    def _follow(self, subscriber: Subscriber) -> None:
        rng = random.Random(subscriber.seed)
        client = Client(self.pushpin_url, subscriber.token)
        last: str | None = None
        try:
            while not self._done(subscriber, last):
                cut_after = rng.randint(1, 25)
                try:
                    stream = client.stream_events(last_event_id=last, read_timeout=10)
                    subscriber.connections += 1
                    count = 0
                    for message in stream:
                        if "id" in message:
                            last = message["id"]
                            if subscriber.start is None:
                                subscriber.start = last
                        if "event" in message:
                            subscriber.seen.append(message["id"])
                            count += 1
                        if count >= cut_after or self._done(subscriber, last):
                            break
                    stream.close()
                except (httpx.HTTPError, SayPIError):
                    subscriber.failures += 1
                    time.sleep(0.2)
        finally:
            client.close()

    def finish(self, timeout: float) -> dict:
        """Stop once every subscriber reached its user's last event (or `timeout` passed)."""
        api = Client(self.api_url)
        for token in {s.token for s in self.subscribers}:
            mine = [s for s in self.subscribers if s.token == token and s.start]
            if mine:
                log = list(api.with_token(token).iter_events(starting_after=_cursor(mine[0])))
                if log:
                    self._final[token] = log[-1]["id"]
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        rows = []
        for s in self.subscribers:
            expected = [e["id"] for e in api.with_token(s.token).iter_events(
                starting_after=_cursor(s))] if s.start else []
            rows.append({"events": len(expected), "received": len(s.seen),
                         "exact": s.seen == expected,
                         "duplicates": len(s.seen) - len(set(s.seen)),
                         "missing": len(set(expected) - set(s.seen)),
                         "connections": s.connections, "refused_or_cut": s.failures})
        api.close()
        return {"subscribers": len(rows), "exact": sum(r["exact"] for r in rows),
                "events": sum(r["events"] for r in rows),
                "connections": sum(r["connections"] for r in rows),
                "refused_or_cut": sum(r["refused_or_cut"] for r in rows),
                "missing": sum(r["missing"] for r in rows),
                "duplicates": sum(r["duplicates"] for r in rows), "rows": rows}


def _cursor(subscriber: Subscriber) -> str | None:
    """Where the subscriber's stream began, as a list cursor (None: before any event, the id
    of number 0, which only a stream gives)."""
    start = subscriber.start
    return None if start is None or start.endswith("0" * 16) else start


def markdown(streams: dict) -> str:
    return (
        "\n## Event streams through Pushpin\n\n"
        f"{streams['subscribers']} subscribers followed the writing users' streams through "
        "Pushpin for the whole run, each cut every 1-25 events and resumed with its "
        f"Last-Event-ID: {streams['connections']} connections "
        f"({streams['refused_or_cut']} refused or cut by the other side), "
        f"{streams['events']} events expected in all; "
        f"{streams['exact']} of {streams['subscribers']} ended with exactly their user's log "
        f"({streams['missing']} missing, {streams['duplicates']} duplicated).\n")
