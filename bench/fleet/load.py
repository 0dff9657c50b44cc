"""The fleet's load: paced client threads, each with one keep-alive connection to HAProxy,
recording every attempt and retrying each write with its Idempotency-Key."""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
import uuid
from dataclasses import dataclass

from bench.seed import Seeded, line_params


@dataclass
class Attempt:
    phase: str
    kind: str  # get, list, write
    started: float  # time.time()
    seconds: float
    status: int | None  # None: no response
    error: str = ""  # the exception's name when there was no response
    retry_after: bool = False


@dataclass
class Write:
    phase: str
    key: str
    conversation: str
    attempts: int = 0
    status: int | None = None
    line_id: str | None = None  # from the 201 (or its replay)
    finished: float = 0.0
    read_back: int | None = None  # status of the writer's read of its line right after

    @property
    def acknowledged(self) -> bool:
        return self.status == 201 and self.line_id is not None

    @property
    def marker(self) -> str:
        return f"fleet {self.key}"


RETRYABLE = {409, 429, 500, 502, 503, 504}


class LoadGenerator:
    """Paced threads, each with one keep-alive connection to HAProxy; bounded in time."""

    def __init__(self, port: int, seeded: Seeded, clients: int, rate: float,
                 write_give_up_seconds: float):
        self.port = port
        self.seeded = seeded
        self.clients = clients
        self.interval = clients / rate  # seconds between two requests of one thread
        self.write_give_up = write_give_up_seconds
        self.phase = "idle"
        self.attempts: list[Attempt] = []
        self.writes: list[Write] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True,
                                          name=f"fleet-client-{i}") for i in range(clients)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))

    def _client(self, index: int) -> None:
        rng = random.Random(index)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        next_at = time.monotonic() + rng.random() * self.interval
        count = 0
        try:
            while not self._stop.is_set():
                delay = next_at - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                    if self._stop.is_set():
                        break
                next_at = max(next_at + self.interval, time.monotonic())
                roll = rng.random()
                count += 1
                if roll < 0.6:
                    token, cid = rng.choice(self.seeded.read_conversations)
                    conn = self._send(conn, "get", "GET", f"/conversations/{cid}", token)[0]
                elif roll < 0.8:
                    token = rng.choice(self.seeded.readers)[1]
                    conn = self._send(conn, "list", "GET", "/conversations?limit=10", token)[0]
                else:
                    conn = self._write(conn, rng, index * 1_000_000 + count)
        finally:
            conn.close()

    def _write(self, conn, rng: random.Random, number: int):
        token, cid = rng.choice(self.seeded.write_conversations)
        write = Write(self.phase, uuid.uuid4().hex, cid)
        self.writes.append(write)
        params = line_params(number, self.seeded.texts)
        params["text"] = write.marker
        body = json.dumps(params)
        give_up = time.monotonic() + self.write_give_up
        pause = 0.05
        while True:
            write.attempts += 1
            conn, status, headers, payload = self._send(
                conn, "write", "POST", f"/conversations/{cid}/lines", token, body,
                {"Idempotency-Key": write.key})
            write.status = status
            if status == 201:
                try:
                    write.line_id = json.loads(payload)["id"]
                except (ValueError, KeyError):
                    write.line_id = None
                if write.line_id is not None:  # read-your-writes, through any instance
                    conn, write.read_back, _, _ = self._send(
                        conn, "read back", "GET", f"/conversations/{cid}/lines/{write.line_id}",
                        token)
                break
            if (status is not None and status not in RETRYABLE) or self._stop.is_set() \
                    or time.monotonic() + pause > give_up:
                break
            wait = pause
            if headers.get("retry-after", "").isdigit():
                wait = max(wait, min(1.0, float(headers["retry-after"])))
            time.sleep(wait)
            pause = min(1.0, pause * 2)
        write.finished = time.time()
        return conn

    def _send(self, conn, kind: str, method: str, target: str, token: str, body: str = "",
              extra: dict[str, str] | None = None):
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        if body:
            headers["Content-Type"] = "application/json"
        headers.update(extra or {})
        phase, started, clock = self.phase, time.time(), time.monotonic()
        try:
            conn.request(method, target, body=body.encode() if body else None, headers=headers)
            response = conn.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()  # reconnects on the next request
            self.attempts.append(Attempt(phase, kind, started, time.monotonic() - clock, None,
                                         type(exc).__name__))
            return conn, None, {}, b""
        response_headers = {k.lower(): v for k, v in response.getheaders()}
        self.attempts.append(Attempt(phase, kind, started, time.monotonic() - clock,
                                     response.status, retry_after="retry-after" in
                                     response_headers))
        return conn, response.status, response_headers, payload
