"""Many Server-Sent Event streams read by several client processes, for `bench live`.

Each process holds its share of the connections on one selector (non-blocking sockets),
notes the time each message arrives (time.time(), taken right after the read) and
compares it with the event's `created_at`; the parent only hands out work and collects
the figures. A process also reports its own CPU time, so a run can show that the client
kept up (and every delivery is counted: a client that fell behind would miss some).
"""

from __future__ import annotations

import multiprocessing
import re
import resource
import selectors
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

_CREATED = re.compile(rb'"type":"line\.created","created_at":"([^"]+)"')
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})")
# A stream whose response has not begun this long after its request is given up and opened
# again, as a client with a response timeout would: it stays in the refusals it counts.
NO_ANSWER_SECONDS = 10.0


def raise_open_files() -> tuple[int, int]:
    """RLIMIT_NOFILE's soft limit raised to the hard one (children inherit it); (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class _Stream:
    __slots__ = ("attempts", "body", "chunk", "chunked", "head", "opened_at", "raw", "request",
                 "sock", "status", "watch")

    def __init__(self, sock: socket.socket, request: bytes, watch: bool, attempts: int):
        self.sock, self.request, self.watch = sock, request, watch
        self.status = 0  # 0: waiting for the status line and headers
        self.head = b""
        self.chunked = False
        self.raw = b""  # chunked framing not decoded yet
        self.chunk = 0  # bytes left of the current chunk (0: a size line comes next)
        self.body = b""  # decoded, an unfinished message at its end
        self.attempts = attempts
        self.opened_at = time.monotonic()

    def decode(self, data: bytes) -> bytes:
        """The body bytes in `data` (HTTP/1.1 chunked framing removed)."""
        if not self.chunked:
            return data
        raw, out = self.raw + data, []
        while raw:
            if self.chunk:
                piece = raw[:self.chunk]
                out.append(piece)
                self.chunk -= len(piece)
                raw = raw[len(piece):]
                continue
            end = raw.find(b"\r\n")
            if end < 0:
                break
            line, raw = raw[:end], raw[end + 2:]
            if line:  # an empty line closes the chunk before it
                self.chunk = int(line.split(b";", 1)[0], 16)
        self.raw = raw
        return b"".join(out)


class _Worker:
    """One client process: its streams, their figures."""

    def __init__(self, address: tuple[str, int], pipe: Connection):
        self.address = address
        self.pipe = pipe
        self.selector = selectors.DefaultSelector()
        self.selector.register(pipe.fileno(), selectors.EVENT_READ, None)
        self.streams: dict[int, _Stream] = {}
        self.held = 0
        self.failed = 0
        self.retried = 0
        self.refusals: dict[str, int] = {}
        self.deliveries = 0
        self.latencies: list[float] = []
        self.epochs: dict[bytes, float] = {}
        self.retry_at: list[tuple[float, bytes, bool, int]] = []
        self.bytes_read = 0

    def _epoch(self, text: bytes) -> float:
        found = self.epochs.get(text)
        if found is None:
            found = datetime.strptime(text.decode(), "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                tzinfo=UTC).timestamp()
            self.epochs[text] = found
        return found

    def connect(self, request: bytes, watch: bool, attempts: int) -> None:
        try:
            sock = socket.create_connection(self.address, timeout=10)
        except OSError:
            self._retry(request, watch, attempts, "connect failed")
            return
        sock.sendall(request)
        sock.setblocking(False)
        stream = _Stream(sock, request, watch, attempts)
        self.streams[sock.fileno()] = stream
        self.selector.register(sock, selectors.EVENT_READ, stream)

    def _retry(self, request: bytes, watch: bool, attempts: int, why: str) -> None:
        self.refusals[why] = self.refusals.get(why, 0) + 1
        if attempts >= 5:
            self.failed += 1
            return
        self.retried += 1
        # As a client would after the stream's retry: hint (1-5 s); a refusal is cheap.
        self.retry_at.append((time.monotonic() + 1.0 + attempts, request, watch, attempts + 1))

    def _drop(self, stream: _Stream) -> None:
        self.selector.unregister(stream.sock)
        self.streams.pop(stream.sock.fileno(), None)
        stream.sock.close()

    def read(self, stream: _Stream) -> None:
        try:
            data = stream.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        now = time.time()
        if not data:
            if stream.status == 200:
                self.held -= 1
            self._drop(stream)
            if stream.status != 200:
                self._retry(stream.request, stream.watch, stream.attempts, "closed")
            return
        self.bytes_read += len(data)
        if stream.status == 0:
            stream.head += data
            match = _STATUS.match(stream.head)
            if match is None:
                return
            if int(match.group(1)) != 200:
                self._drop(stream)
                self._retry(stream.request, stream.watch, stream.attempts,
                            stream.head.split(b"\r\n", 1)[0][9:].decode(errors="replace"))
                return
            end = stream.head.find(b"\r\n\r\n")
            if end < 0:
                return
            stream.status = 200
            self.held += 1
            stream.chunked = b"transfer-encoding: chunked" in stream.head[:end].lower()
            data, stream.head = stream.head[end + 4:], b""
        if not stream.watch:
            return
        # Whole messages only: one cut between two reads is counted once, when it ends.
        body = stream.body + stream.decode(data)
        cut = body.rfind(b"\n\n")
        if cut < 0:
            stream.body = body
            return
        stream.body = body[cut + 2:]
        for match in _CREATED.finditer(body, 0, cut):
            self.latencies.append(now - self._epoch(match.group(1)))
            self.deliveries += 1

    def give_up_unanswered(self, now: float) -> None:
        """Streams still without a response NO_ANSWER_SECONDS after their request: retried."""
        for stream in [s for s in self.streams.values()
                       if s.status == 0 and now - s.opened_at > NO_ANSWER_SECONDS]:
            self._drop(stream)
            self._retry(stream.request, stream.watch, stream.attempts,
                        f"no answer in {NO_ANSWER_SECONDS:g} s")

    def run(self) -> None:
        checked = time.monotonic()
        while True:
            if time.monotonic() - checked > 1.0:
                checked = time.monotonic()
                self.give_up_unanswered(checked)
            if self.retry_at:
                now = time.monotonic()
                due = [r for r in self.retry_at if r[0] <= now]
                if due:
                    self.retry_at = [r for r in self.retry_at if r[0] > now]
                    for _, request, watch, attempts in due:
                        self.connect(request, watch, attempts)
            for key, _ in self.selector.select(timeout=0.2):
                if key.data is None:
                    if not self.command(self.pipe.recv()):
                        return
                else:
                    self.read(key.data)

    def command(self, message: tuple[str, Any]) -> bool:
        verb, argument = message
        if verb == "open":
            requests, watch = argument
            for request in requests:
                self.connect(request, watch, 0)
            self.pipe.send(("queued", len(requests)))
        elif verb == "status":
            self.pipe.send({"held": self.held, "failed": self.failed,
                            "pending": len(self.retry_at)
                            + sum(1 for s in self.streams.values() if s.status == 0)})
        elif verb == "delivered":
            self.pipe.send(self.deliveries)
        elif verb == "mark":  # a measurement starts: figures from here on
            self.latencies, self.deliveries, self.bytes_read = [], 0, 0
            self.pipe.send(("marked", resource.getrusage(resource.RUSAGE_SELF)))
        elif verb == "report":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            self.pipe.send({"held": self.held, "failed": self.failed, "retried": self.retried,
                            "refusals": self.refusals, "deliveries": self.deliveries,
                            "latencies": self.latencies, "bytes": self.bytes_read,
                            "cpu": usage.ru_utime + usage.ru_stime})
        elif verb == "close":
            for stream in list(self.streams.values()):
                stream.sock.close()
            self.pipe.send(("closed", None))
            return False
        return True


def _work(address: tuple[str, int], pipe: Connection) -> None:
    raise_open_files()
    _Worker(address, pipe).run()


@dataclass
class CrowdFigures:
    held: int
    failed: int
    retried: int
    refusals: dict[str, int]
    deliveries: int
    latencies: list[float]
    cpu_seconds: list[float]  # per process, over the measurement
    seconds: float  # the measurement's wall time
    per_process: list[int] = field(default_factory=list)  # deliveries per process

    @property
    def cpu_share(self) -> list[float]:
        """Each process's CPU time over the measurement, as a share of one core."""
        return [round(c / self.seconds, 3) if self.seconds else 0.0 for c in self.cpu_seconds]


class Crowd:
    """`processes` client processes, each with its share of the streams."""

    def __init__(self, host: str, port: int, processes: int):
        context = multiprocessing.get_context("spawn")
        self._pipes: list[Connection] = []
        self._processes = []
        for _ in range(processes):
            mine, theirs = context.Pipe()
            process = context.Process(target=_work, args=((host, port), theirs), daemon=True)
            process.start()
            theirs.close()
            self._pipes.append(mine)
            self._processes.append(process)
        self._marked_cpu: list[float] = [0.0] * processes
        self._marked_at = 0.0

    def _ask(self, message: tuple[str, Any]) -> list[Any]:
        for pipe in self._pipes:
            pipe.send(message)
        return [pipe.recv() for pipe in self._pipes]

    def status(self) -> dict[str, int]:
        answers = self._ask(("status", None))
        return {key: sum(a[key] for a in answers) for key in ("held", "failed", "pending")}

    def open_many(self, targets: Sequence[tuple[str, str]], watch: bool, wave: int = 250,
                  wave_seconds: float = 30.0, say: Callable[[str], None] | None = None) -> float:
        """Each (path, bearer token) opened as a stream, `wave` at a time, each wave held (or
        refused for good, or `wave_seconds`) before the next: clients arrive over seconds,
        not in one instant (zurl takes 2,000 requests at once). Returns the seconds taken."""
        started = time.monotonic()
        base = self.status()["held"]
        count = len(self._pipes)
        for first in range(0, len(targets), wave):
            batch = targets[first:first + wave]
            shares: list[list[bytes]] = [[] for _ in range(count)]
            for n, (path, token) in enumerate(batch):
                shares[(first + n) % count].append(
                    (f"GET {path} HTTP/1.1\r\nHost: live\r\nAccept: text/event-stream\r\n"
                     f"Authorization: Bearer {token}\r\n\r\n").encode())
            for pipe, share in zip(self._pipes, shares, strict=True):
                pipe.send(("open", (share, watch)))
            for pipe in self._pipes:
                pipe.recv()
            goal = first + len(batch)
            deadline = time.monotonic() + wave_seconds
            # The next wave goes once this one is answered; a few still retrying (refused,
            # or unanswered for NO_ANSWER_SECONDS) do not hold up the rest.
            retrying = max(5, wave // 10)
            while time.monotonic() < deadline:
                state = self.status()
                if state["held"] - base + state["failed"] + state["pending"] >= goal \
                        and state["pending"] <= retrying:
                    break
                time.sleep(0.05)
            if say is not None and (goal // wave) % 8 == 0:
                say(f"  {state['held'] - base} held, {state['failed']} failed of {goal}")
        # The last refusals' retries.
        deadline = time.monotonic() + wave_seconds
        while self.status()["pending"] and time.monotonic() < deadline:
            time.sleep(0.1)
        return time.monotonic() - started

    def delivered(self) -> list[int]:
        """Deliveries read so far (since the mark), per process."""
        return self._ask(("delivered", None))

    def mark(self) -> None:
        answers = self._ask(("mark", None))
        self._marked_cpu = [u.ru_utime + u.ru_stime for _, u in answers]
        self._marked_at = time.monotonic()

    def figures(self) -> CrowdFigures:
        seconds = time.monotonic() - self._marked_at
        answers = self._ask(("report", None))
        refusals: dict[str, int] = {}
        for answer in answers:
            for why, n in answer["refusals"].items():
                refusals[why] = refusals.get(why, 0) + n
        return CrowdFigures(
            held=sum(a["held"] for a in answers), failed=sum(a["failed"] for a in answers),
            retried=sum(a["retried"] for a in answers), refusals=refusals,
            deliveries=sum(a["deliveries"] for a in answers),
            latencies=[x for a in answers for x in a["latencies"]],
            cpu_seconds=[round(a["cpu"] - m, 3) for a, m in
                         zip(answers, self._marked_cpu, strict=True)],
            seconds=seconds, per_process=[a["deliveries"] for a in answers])

    def close(self) -> None:
        for pipe in self._pipes:
            try:
                pipe.send(("close", None))
                pipe.recv()
            except (OSError, EOFError):
                pass
        for process in self._processes:
            process.join(5)
            if process.is_alive():
                process.terminate()
