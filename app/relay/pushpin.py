"""Publishing to Pushpin: committed events to their channels, in each channel's order, and
a close to the control channel of each deleted user. See docs/streams.md ("Publishing").

One publisher task per Pushpin instance, each with its own feed, so one that is down holds
back only itself. The EPCP publish call is one JSON POST: http.client, no library.
"""

from __future__ import annotations

import bisect
import http.client
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from app.api.events import event_id
from app.api.streams import sse_message
from app.cowsay.cache import Renderer
from app.http.grip import control_channel, conversation_channel, user_channel
from app.store.db import Database
from app.store.event_feed import EventFeed
from app.store.events import conversation_seq_upto
from app.store.users import DeletionWatch

# A channel quiet this long after its last publish gets its seal (_seal_quiet_channels);
# the seals wait for at most this many channels (the oldest is dropped beyond).
SEAL_AFTER_SECONDS = 1.0
MAX_UNSEALED = 100_000
SEALS_PER_PUBLISH = 1000  # about 150 kB, well under Pushpin's push_in_http_max_body_size
LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class PublishFailed(Exception):
    pass


class PublishMetrics(Collector):
    """The publishers' figures, labelled by Pushpin instance, kept in this process and read
    at each scrape (plain values: PROMETHEUS_MULTIPROC_DIR, set for the servers, must not
    turn them into files the relay does not have)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._published: dict[str, int] = {}
        self._failures: dict[str, int] = {}
        self._lag: dict[str, tuple[list[int], float]] = {}  # bucket counts, sum

    def published(self, pushpin: str, lags: Sequence[float]) -> None:
        with self._lock:
            self._published[pushpin] = self._published.get(pushpin, 0) + len(lags)
            counts, total = self._lag.get(pushpin) or ([0] * (len(LAG_BUCKETS) + 1), 0.0)
            for lag in lags:
                counts[bisect.bisect_left(LAG_BUCKETS, lag)] += 1
                total += lag
            self._lag[pushpin] = (counts, total)

    def failed(self, pushpin: str) -> None:
        with self._lock:
            self._failures[pushpin] = self._failures.get(pushpin, 0) + 1

    def collect(self) -> Iterator[Metric]:
        published = CounterMetricFamily("saypi_stream_events_published",
                                        "Events Pushpin accepted, per instance.",
                                        labels=["pushpin"])
        failures = CounterMetricFamily("saypi_stream_publish_failures",
                                       "Publish calls Pushpin refused or that failed (the "
                                       "batch is published again).", labels=["pushpin"])
        lag = HistogramMetricFamily("saypi_stream_publish_lag_seconds",
                                    "From an event's commit to Pushpin's accepting it.",
                                    labels=["pushpin"])
        with self._lock:
            for pushpin, count in self._published.items():
                published.add_metric([pushpin], count)
            for pushpin, count in self._failures.items():
                failures.add_metric([pushpin], count)
            for pushpin, (counts, total) in self._lag.items():
                running, buckets = 0, []
                for bound, count in zip([*map(str, LAG_BUCKETS), "+Inf"], counts,
                                        strict=True):
                    running += count
                    buckets.append((bound, running))
                lag.add_metric([pushpin], buckets, total)
        yield published
        yield failures
        yield lag


class PublishClient:
    """POST /publish/ to one Pushpin's push_in_http base URL, on one kept-alive connection."""

    def __init__(self, base_url: str, timeout: float = 5.0):
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"PUSHPIN_PUBLISH_URLS: not an http(s) URL: {base_url}")
        self.base_url = base_url
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._path = parts.path.rstrip("/") + "/publish/"
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def publish(self, items: list[dict[str, Any]]) -> None:
        body = json.dumps({"items": items}, separators=(",", ":")).encode()
        for attempt in (1, 2):  # a kept-alive connection the server closed: once more
            conn = self._conn or self._connect()
            try:
                conn.request("POST", self._path, body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                answer = response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if attempt == 2:
                    raise PublishFailed(f"{self.base_url}: {exc}") from exc
                continue
            if response.status != 200:
                raise PublishFailed(f"{self.base_url}: {response.status} "
                                    f"{answer[:200].decode(errors='replace')}")
            return

    def _connect(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        self._conn = cls(self._host, self._port, timeout=self._timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def coalesce(items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One item per channel: a channel's items (in their order, each following the one
    before) become one whose content is theirs in turn, whose id is the last one's and
    whose prev-id is the first one's. Pushpin's work is per item and subscriber, so a busy
    channel's N events in one item cost its subscribers one delivery, not N."""
    merged: dict[str, dict[str, Any]] = {}
    for item in items:
        into = merged.get(item["channel"])
        if into is None:
            merged[item["channel"]] = {**item, "formats": {"http-stream": {
                "content": item["formats"]["http-stream"]["content"]}}}
            continue
        into["id"] = item["id"]
        into["formats"]["http-stream"]["content"] += item["formats"]["http-stream"]["content"]
    return list(merged.values())


class PushpinPublisher:
    """A relay task: the next batch of the feed `pushpin <url>`, published to that Pushpin,
    the feed's position committed only once Pushpin accepted the batch.

    A batch's events of one channel go as one item (`coalesce`). While events keep coming,
    a publish follows the one before after `gather_seconds` at the soonest, so a busy
    channel's events gather into fewer, larger items; after a quiet spell the next event
    goes at once."""

    def __init__(self, db: Database, client: PublishClient, renderer: Renderer,
                 metrics: PublishMetrics, batch_size: int = 200, gather_seconds: float = 0.0):
        self.name = f"pushpin {client.base_url}"
        self.feed = EventFeed(db, self.name)
        self.client = client
        self.renderer = renderer
        self.metrics = metrics
        self.batch_size = batch_size
        self.gather_seconds = gather_seconds
        self._published_at = 0.0  # time.monotonic() of the last publish of events
        # channel -> (its last published id, when): the channels to seal once quiet.
        self._unsealed: dict[str, tuple[str, float]] = {}

    def step(self) -> bool:
        published = self._publish_next()
        # Every step, busy or not: a channel is quiet while others are busy.
        self._seal_quiet_channels()
        return published

    def _publish_next(self) -> bool:
        wait = self._published_at + self.gather_seconds - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # bounded by gather_seconds: the relay's stop waits longer
        with self.feed.batch(self.batch_size) as batch:
            if batch is None or not batch.events:
                return False
            items: list[dict[str, Any]] = []
            # The last event of each (user, conversation) in this batch: the next one's prev.
            last: dict[tuple[int, int], int] = {}
            for event in batch.events:
                formats = {"http-stream": {"content": sse_message(event, self.renderer)}}
                this = event_id(event.user_id, event.seq)
                items.append({"channel": user_channel(event.user_id), "id": this,
                              "prev-id": event_id(event.user_id, event.seq - 1),
                              "formats": formats})
                if event.conversation is not None:
                    key = (event.user_id, event.conversation)
                    prev = last.get(key)
                    if prev is None:
                        prev = conversation_seq_upto(batch.work.conn, event.user_id,
                                                     event.conversation, event.seq - 1)
                    last[key] = event.seq
                    items.append({"channel": conversation_channel(*key), "id": this,
                                  "prev-id": event_id(event.user_id, prev),
                                  "formats": formats})
                batch.handed_on(event)
            items = coalesce(items)
            try:
                self.client.publish(items)
            except PublishFailed:
                self.metrics.failed(self.client.base_url)
                raise  # the batch rolls back: published again, from the same position
            self._published_at = time.monotonic()
            now = time.time()
            self.metrics.published(self.client.base_url, [
                max(0.0, now - event.created_at.timestamp()) for event in batch.events])
            for item in items:
                self._unsealed.pop(item["channel"], None)  # newest last, for the seal's order
                self._unsealed[item["channel"]] = (item["id"], time.monotonic())
            while len(self._unsealed) > MAX_UNSEALED:
                self._unsealed.pop(next(iter(self._unsealed)))
            return True

    def _seal_quiet_channels(self) -> None:
        """Publish once more, to each channel quiet for SEAL_AFTER_SECONDS, a comment with
        id and prev-id both its last event's id. A subscription Pushpin registered just
        after that event's publish (its hold named the event before) sees the prev-id
        differ from its own and recovers through its link at once; one that has the event
        gets a comment. Without this, such a subscriber would wait for the channel's next
        event or the link's timeout. Pushpin's id cache must be off (id_cache_ttl=0, its
        own default): it drops an item whose id it saw on the channel, as the seal's is."""
        quiet_since = time.monotonic() - SEAL_AFTER_SECONDS
        items: list[dict[str, Any]] = []
        for channel, (last, published_at) in self._unsealed.items():
            if published_at > quiet_since or len(items) >= SEALS_PER_PUBLISH:
                break  # in publishing order: the rest are newer (or sealed at the next step)
            items.append({"channel": channel, "id": last, "prev-id": last,
                          "formats": {"http-stream": {"content": ":\n\n"}}})
        if not items:
            return
        try:
            self.client.publish(items)
        except PublishFailed:
            self.metrics.failed(self.client.base_url)
            return  # sealed at a later step
        for item in items:
            self._unsealed.pop(item["channel"], None)

    def close(self) -> None:
        self.client.close()


class DeletionCloser:
    """A relay task: each deleted user's streams closed at once, on every Pushpin (a close
    published to the user's control channel). A relay that was down misses the notices;
    those streams end at their next recovery, whose link answers 404."""

    name = "pushpin deletions"

    def __init__(self, watch: DeletionWatch, clients: Sequence[PublishClient],
                 logger: logging.Logger):
        self.watch = watch
        self.clients = tuple(clients)
        self.logger = logger

    def step(self) -> bool:
        deleted = self.watch.next(timeout=1.0)
        if not deleted:
            return False
        items = [{"channel": control_channel(user),
                  "formats": {"http-stream": {"action": "close"}}} for user in deleted]
        for client in self.clients:
            try:
                client.publish(items)
            except PublishFailed as exc:
                self.logger.warning("closing deleted users' streams failed: %s", exc)
        return True

    def close(self) -> None:
        self.watch.close()
        for client in self.clients:
            client.close()
