"""`python -m bench fleet` (`make fleet`): SayPI instances behind a real HAProxy, under load,
through a rolling restart, a crash and a database restart.

On 127.0.0.1 only and bounded in time: one PostgreSQL (embedded, or a new
database on DATABASE_URL's server), N instances of `run.py serve` each on its
own port (REUSE_PORT is on by default: two instances on one port would share
its traffic), and deploy/haproxy/haproxy.cfg with one server line per
instance (bench/haproxy.py). A Python load generator (threads, each with one
keep-alive http.client connection to HAProxy, paced) sends the benchmark's mix
(60 % GET a conversation, 20 % list, 20 % POST a line with an
Idempotency-Key) while the harness runs, one after the other:

1. rolling restart: SIGTERM to one instance's master at a time; wait until it
   drained and exited, start its replacement on the same port, wait until
   it answers /health/ready and HAProxy holds it UP (stats socket); next;
2. crash: SIGKILL to one instance's process group (master and workers)
   mid-load; its replacement starts a second later, as a supervisor's would;
3. database restart: `pg_ctl restart -m fast` of the embedded PostgreSQL
   (skipped with DATABASE_URL: the harness cannot restart a server it did
   not start).

Writes are retried by the load generator with the same Idempotency-Key, as a
real client would (connection errors, 5xx, 409 while the first attempt still
holds the key), until acknowledged or FLEET_WRITE_GIVE_UP_SECONDS passed.
Each line's text names its key, so afterwards PostgreSQL says how many rows
each key made (exactly one for every acknowledged write: nothing lost,
nothing duplicated) and whether every acknowledged line id exists.

Per phase the report has requests (every HTTP attempt), 2xx, every other
status with its count, connection errors, p50/p99/max latency, writes
acknowledged against rows, and HAProxy's own retries (from its log); then
the targets, each met or not. bench-results/fleet.md and fleet.json.

With FLEET_TOPOLOGY=replicated (the default when DATABASE_URL is unset) the
database is a primary with a streaming hot standby, and a redis-server runs
beside it: every instance reads from the standby (DATABASE_REPLICA_URLS),
keeps rate limits (on, at a rate the load cannot exhaust) and the users'
write positions in Redis (REDIS_URL), so the phases also prove
read-your-writes through restarts: every acknowledged line is read back at
once, through HAProxy, by its writer. The database restart restarts the
primary. FLEET_TOPOLOGY=single is one PostgreSQL, as above.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from bench.postgres import BenchDatabase, open_database, open_replicated
from bench.seed import Seeded, line_params, seed
from bench.servers import Server, ServerFailed, base_env, python
from bench.settings import UNBOUNDED_LIMITS
from harness import ROOT
from harness.haproxy import Backend, HAProxy, HAProxyUnavailable, ensure_haproxy, find_haproxy

RESULTS = ROOT / "bench-results"

# name -> (default, help)
KNOBS: dict[str, tuple[str, str]] = {
    "FLEET_INSTANCES": ("3", "SayPI instances behind HAProxy"),
    "FLEET_WORKERS": ("2", "WEB_CONCURRENCY of each instance"),
    "FLEET_THREADS": ("4", "THREADS of each instance (DB_POOL_MAX too)"),
    "FLEET_CLIENTS": ("8", "load generator threads, one keep-alive connection each"),
    "FLEET_RATE": ("120", "requests per second the load generator sends in all (paced)"),
    "FLEET_STEADY_SECONDS": ("5", "load before the first phase (the baseline row)"),
    "FLEET_SETTLE_SECONDS": ("8", "load after each phase's event, still counted in that phase"),
    "FLEET_WRITE_GIVE_UP_SECONDS": ("20", "how long a client retries one write"),
    "FLEET_GRACEFUL_TIMEOUT": ("10", "GRACEFUL_TIMEOUT of each instance"),
    "FLEET_DB_POOL_TIMEOUT": ("3", "DB_POOL_TIMEOUT of each instance"),
}
TOPOLOGIES = ("replicated", "single")
USAGE = "python -m bench fleet: environment knobs (explicit values win):\n" + "\n".join(
    f"  {name:<28} default {default:<6} {text}" for name, (default, text) in KNOBS.items()) + (
    "\n  FLEET_TOPOLOGY               default replicated (single with DATABASE_URL): "
    "replicated adds a streaming standby and Redis")

# Settings the harness decides; every other SayPI setting passes through from the environment.
CONTROLLED = {"APP_ENV", "DATABASE_URL", "HOST", "PORT", "DATA_DIR", "USER_SECRETS",
              "PROMETHEUS_MULTIPROC_DIR", "RATE_LIMIT_USER_PER_MINUTE", "RATE_LIMIT_IP_PER_MINUTE",
              "WEB_CONCURRENCY", "THREADS", "DB_POOL_MAX", "DB_POOL_MIN", "TRUSTED_PROXIES",
              "GRACEFUL_TIMEOUT", "DB_POOL_TIMEOUT", "HEALTH_CACHE_SECONDS", "FAULT_INJECTION",
              "REUSE_PORT"}


@dataclass(frozen=True)
class FleetSettings:
    instances: int
    workers: int
    threads: int
    clients: int
    rate: float
    steady_seconds: float
    settle_seconds: float
    write_give_up_seconds: float
    graceful_timeout: float
    db_pool_timeout: float
    topology: str = "single"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> FleetSettings:
        values, problems = {}, []
        for name, (default, _help) in KNOBS.items():
            raw = env.get(name, default).strip()
            try:
                value = float(raw)
                if value <= 0 and name != "FLEET_STEADY_SECONDS":
                    raise ValueError
            except ValueError:
                problems.append(f"{name}: must be a positive number, got {raw!r}")
                value = float(default)
            values[name.removeprefix("FLEET_").lower()] = value
        for name in ("instances", "workers", "threads", "clients"):
            values[name] = int(values[name])
        default_topology = "single" if env.get("DATABASE_URL") else "replicated"
        values["topology"] = env.get("FLEET_TOPOLOGY", default_topology).strip().lower()
        if values["topology"] not in TOPOLOGIES:
            problems.append(f"FLEET_TOPOLOGY: must be one of {', '.join(TOPOLOGIES)}")
        elif values["topology"] == "replicated" and env.get("DATABASE_URL"):
            problems.append("FLEET_TOPOLOGY: replicated makes its own primary and standby; "
                            "unset DATABASE_URL")
        if problems:
            raise SystemExit("bench fleet: " + "; ".join(problems))
        return cls(**values)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


# --- the instances --------------------------------------------------------------------------
class Instance:
    """One SayPI slot: a fixed port HAProxy's server line points at, and its current process."""

    def __init__(self, fleet: Fleet, slot: int, port: int):
        self.fleet = fleet
        self.slot = slot
        self.name = f"saypi{slot}"
        self.port = port
        self.generation = 0
        self.server: Server | None = None
        self.logs: list[Path] = []

    def start(self) -> Server:
        self.generation += 1
        log = self.fleet.work / f"{self.name}-{self.generation}.log"
        self.logs.append(log)
        env = self.fleet.instance_env(self)
        self.server = Server(f"{self.name}-{self.generation}",
                             [python(), str(ROOT / "run.py"), "serve"], env, self.port, log,
                             "/health/ready", self.fleet.settings.workers)
        return self.server

    def terminate(self) -> None:
        """SIGTERM to the master only, as an orchestrator stopping a container does."""
        self.fleet.count_reads(self)
        os.kill(self.server.process.pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to the whole process group: the master and its workers die at once."""
        os.killpg(self.server.process.pid, signal.SIGKILL)

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.server.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


class Fleet:
    """The database, the instances, HAProxy; everything started is stopped by close()."""

    def __init__(self, env: Mapping[str, str], settings: FleetSettings):
        self.env = env
        self.settings = settings
        self.started = time.monotonic()
        self.work = Path(tempfile.mkdtemp(prefix="saypi-fleet-"))
        self.secret = secrets.token_urlsafe(32)
        self.logger = logging.getLogger("bench.fleet")
        self.db: BenchDatabase | None = None
        self.seeded: Seeded | None = None
        self.instances: list[Instance] = []
        self.haproxy: HAProxy | None = None
        self.topology_env: dict[str, str] = {}  # the replicated topology's settings
        self.reads: Counter[str] = Counter()  # db_reads_total by pool, instances stopped so far

    def say(self, message: str) -> None:
        print(f"[fleet {time.monotonic() - self.started:6.1f}s] {message}", flush=True)

    def instance_env(self, instance: Instance) -> dict[str, str]:
        s = self.settings
        env = base_env(self.env, CONTROLLED, str(self.work))
        env.update({
            "APP_ENV": "production", "DATABASE_URL": self.db.dsn, "HOST": "127.0.0.1",
            "PORT": str(instance.port), "USER_SECRETS": self.secret,
            "DATA_DIR": str(self.work / "data"),
            "PROMETHEUS_MULTIPROC_DIR": str(self.work / f"metrics-{instance.name}-"
                                                        f"{instance.generation}"),
            "RATE_LIMIT_USER_PER_MINUTE": "0", "RATE_LIMIT_IP_PER_MINUTE": "0",
            "WEB_CONCURRENCY": str(s.workers), "THREADS": str(s.threads),
            "DB_POOL_MAX": str(s.threads), "DB_POOL_MIN": "1",
            "TRUSTED_PROXIES": "127.0.0.1/32",
            "GRACEFUL_TIMEOUT": f"{s.graceful_timeout:g}",
            "DB_POOL_TIMEOUT": f"{s.db_pool_timeout:g}",
            # Readiness follows the database within half a second of its return.
            "HEALTH_CACHE_SECONDS": "0.5",
        })
        env.update(self.topology_env)
        return env

    def prepare(self) -> None:
        haproxy = ensure_haproxy(self.say)
        self.say(f"haproxy: {haproxy}")
        if self.settings.topology == "replicated":
            self.say("starting a PostgreSQL primary, a streaming standby and redis-server")
            self.db, scaled = open_replicated(self.logger)
            self.topology_env = {**scaled, **UNBOUNDED_LIMITS}
        else:
            self.say("starting PostgreSQL" + (" (a new database on DATABASE_URL's server)"
                                              if self.env.get("DATABASE_URL") else " (embedded)"))
            self.db = open_database(self.env, self.logger)
        self.seeded = seed(self.db.dsn, users=20, conversations=200, lines=10, cap_lines=10,
                           phrase_count=50, secret=self.secret)
        self.say(f"seeded: {self.seeded.stats}")
        ports = _free_ports(self.settings.instances + 1)
        self.instances = [Instance(self, i + 1, port) for i, port in enumerate(ports[1:])]
        for instance in self.instances:
            instance.start()
        for instance in self.instances:
            instance.server.wait_ready()
            self.say(f"{instance.name} ready on port {instance.port}, workers "
                     f"{instance.server.worker_pids()}")
        s = self.settings
        backends = [Backend(i.name, f"127.0.0.1:{i.port}", s.workers * s.threads)
                    for i in self.instances]
        self.haproxy = HAProxy(haproxy, backends, ports[0], self.work)
        for instance in self.instances:
            if not self.haproxy.wait_state(instance.name, "UP", 15):
                raise RuntimeError(f"HAProxy never held {instance.name} UP: "
                                   f"{self.haproxy.server_states()}\n{self.haproxy.log_tail()}")
        self.say(f"HAProxy on port {self.haproxy.port}: {self.haproxy.server_states()}")
        self.check_forwarded_for()

    def check_forwarded_for(self) -> None:
        """A request from 127.0.0.9 through HAProxy is logged by SayPI with that address."""
        request_id = f"fleet-xff-{uuid.uuid4().hex}"
        with socket.socket() as sock:
            sock.settimeout(5)
            sock.bind(("127.0.0.9", 0))
            sock.connect(("127.0.0.1", self.haproxy.port))
            sock.sendall(f"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Request-ID: {request_id}"
                         f"\r\nX-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n\r\n"
                         .encode())
            while sock.recv(65536):
                pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for instance in self.instances:
                for line in instance.server.log_tail(200000).splitlines():
                    if request_id in line and line.startswith("{"):
                        addr = json.loads(line).get("remote_addr")
                        if addr != "127.0.0.9":
                            raise RuntimeError(f"SayPI logged {addr!r} for a client at "
                                               f"127.0.0.9 behind HAProxy")
                        self.say("X-Forwarded-For: SayPI logs the client's address (127.0.0.9)")
                        return
            time.sleep(0.1)
        raise RuntimeError("the forwarded request never reached an instance's access log")

    def count_reads(self, instance: Instance) -> None:
        """Add the instance's db_reads_total by pool (a killed instance's are lost)."""
        try:
            status, body = instance.server.get("/metrics", timeout=5)
        except OSError:
            return
        for line in body.decode(errors="replace").splitlines() if status == 200 else ():
            match = re.match(r'db_reads_total\{pool="([^"]+)"\} (\S+)', line)
            if match:
                self.reads[match.group(1)] += int(float(match.group(2)))

    def keep_logs(self) -> None:
        """HAProxy's log and the instances' non-access lines go to bench-results/logs/fleet/."""
        target = RESULTS / "logs" / "fleet"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True, exist_ok=True)
        if self.haproxy is not None:
            shutil.copy(self.haproxy.log_path, target / "haproxy.log")
        for instance in self.instances:
            for log in instance.logs:
                try:
                    lines = log.read_text(errors="replace").splitlines()
                except OSError:
                    continue
                kept = [line for line in lines if '"method": ' not in line]
                (target / log.name).write_text("\n".join(kept) + "\n")

    def close(self) -> None:
        for instance in self.instances:
            if instance.server is not None:
                try:
                    instance.server.stop(timeout=30)
                except Exception as exc:
                    self.say(f"stopping {instance.name} failed: {exc}")
        if self.haproxy is not None:
            self.haproxy.stop()
        if self.db is not None:
            self.db.close()
        shutil.rmtree(self.work, ignore_errors=True)


# --- the load generator -----------------------------------------------------------------------
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


# --- phases ---------------------------------------------------------------------------------
@dataclass
class Phase:
    name: str
    started: float = 0.0  # time.time()
    ended: float = 0.0
    events: list[dict] = field(default_factory=list)
    database_back: float | None = None  # time.time() when pg_ctl restart returned


def run_phases(fleet: Fleet, load: LoadGenerator) -> list[Phase]:
    s = fleet.settings
    phases: list[Phase] = []

    def begin(name: str) -> Phase:
        if phases:
            phases[-1].ended = time.time()
        phase = Phase(name, started=time.time())
        phases.append(phase)
        load.phase = name
        fleet.say(f"phase: {name}")
        return phase

    def event(phase: Phase, what: str, **details) -> None:
        phase.events.append({"at": round(time.time() - phase.started, 2), "event": what,
                             **details})
        fleet.say(f"  {what} {details if details else ''}")

    def wait_up(phase: Phase, instance: Instance) -> None:
        instance.server.wait_ready(timeout=90)
        if not fleet.haproxy.wait_state(instance.name, "UP", 30):
            raise RuntimeError(f"HAProxy did not hold {instance.name} UP again: "
                               f"{fleet.haproxy.server_states()}")
        event(phase, f"{instance.name} UP in HAProxy", pid=instance.server.process.pid)

    steady = begin("steady")
    load.start()
    time.sleep(s.steady_seconds)
    event(steady, "steady load", states=fleet.haproxy.server_states())

    rolling = begin("rolling restart")
    for instance in fleet.instances:
        old = instance.server
        event(rolling, f"SIGTERM {instance.name}", pid=old.process.pid)
        instance.terminate()
        code = instance.wait_exit(s.graceful_timeout + 15)
        old.stop()  # closes its log; kills the group if it did not exit
        event(rolling, f"{instance.name} exited", status=code)
        instance.start()
        wait_up(rolling, instance)
    time.sleep(s.settle_seconds)

    crash = begin("crash")
    time.sleep(min(3.0, s.settle_seconds))
    victim = fleet.instances[len(fleet.instances) // 2]
    event(crash, f"SIGKILL {victim.name} (process group)", pid=victim.server.process.pid,
          workers=victim.server.worker_pids())
    victim.kill()
    victim.wait_exit(10)
    victim.server.stop()
    time.sleep(1.0)  # a supervisor notices and starts a replacement
    event(crash, f"{victim.name} state in HAProxy",
          state=fleet.haproxy.server_states().get(victim.name))
    victim.start()
    wait_up(crash, victim)
    time.sleep(s.settle_seconds)

    database = begin("database restart")
    if fleet.db.restart is None:
        event(database, "skipped: PostgreSQL on DATABASE_URL's server is not ours to restart")
        time.sleep(min(3.0, s.settle_seconds))
    else:
        time.sleep(min(3.0, s.settle_seconds))
        event(database, "pg_ctl restart -m fast")
        fleet.db.restart()
        database.database_back = time.time()
        event(database, "database back (pg_ctl -w returned)")
        time.sleep(max(8.0, s.settle_seconds))
    database.ended = time.time()
    load.phase = "after"
    return phases


# --- the figures ----------------------------------------------------------------------------
def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


_HAPROXY_LINE = re.compile(
    r'\[(?P<date>\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2}\.\d{3})\] \S+ (?P<backend>\S+)/(?P<server>\S+)'
    r' (?P<timers>\S+) (?P<status>-?\d+) \S+ \S+ \S+ (?P<term>\S{4}) '
    r'(?P<conns>\S+) \S+ "(?P<request>[^"]*)"')


def haproxy_log(path: Path) -> list[dict]:
    """The request lines of HAProxy's httplog: time, server, status, termination, retries."""
    out = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        match = _HAPROXY_LINE.search(line)
        if not match:
            continue
        when = datetime.strptime(match["date"], "%d/%b/%Y:%H:%M:%S.%f").astimezone()
        retries = match["conns"].split("/")[-1]
        out.append({"time": when.timestamp(), "server": match["server"],
                    "status": int(match["status"]), "term": match["term"],
                    "retries": int(retries.lstrip("+") or 0),
                    "redispatched": retries.startswith("+"), "request": match["request"]})
    return out


def count_rows(dsn: str, writes: list[Write]) -> tuple[dict[str, int], set[str]]:
    """Rows per write marker, and which acknowledged line ids exist, from PostgreSQL."""
    from app.domain import ids

    markers = [w.marker for w in writes]
    acked = {w.line_id: ids.decode(ids.LINE, w.line_id) for w in writes if w.acknowledged}
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = dict(conn.execute("SELECT text, count(*) FROM lines WHERE text = ANY(%s) "
                                 "GROUP BY text", (markers,)).fetchall())
        found = {row[0] for row in conn.execute("SELECT rid FROM lines WHERE rid = ANY(%s)",
                                                ([n for n in acked.values() if n],))}
    existing = {line_id for line_id, number in acked.items() if number in found}
    return rows, existing


def summarize(phases: list[Phase], load: LoadGenerator, rows: dict[str, int],
              existing: set[str], proxy_log: list[dict], db_pool_timeout: float) -> list[dict]:
    out = []
    for phase in phases:
        attempts = [a for a in load.attempts if a.phase == phase.name]
        writes = [w for w in load.writes if w.phase == phase.name]
        statuses = Counter(a.status for a in attempts if a.status is not None)
        errors = Counter(a.error for a in attempts if a.status is None)
        latencies = [a.seconds * 1000 for a in attempts]
        acked = [w for w in writes if w.acknowledged]
        unacked = [w for w in writes if not w.acknowledged]
        logged = [r for r in proxy_log if phase.started <= r["time"] < (phase.ended or 1e12)]
        row = {
            "phase": phase.name, "seconds": round((phase.ended or time.time()) - phase.started, 1),
            "requests": len(attempts),
            "ok": sum(n for code, n in statuses.items() if 200 <= code < 300),
            "statuses": {str(code): n for code, n in sorted(statuses.items())
                         if not 200 <= code < 300},
            "connection_errors": dict(errors),
            "p50_ms": round(percentile(latencies, 0.50), 1),
            "p99_ms": round(percentile(latencies, 0.99), 1),
            "max_ms": round(max(latencies, default=0.0), 1),
            "writes": len(writes),
            "writes_acknowledged": len(acked),
            "writes_retried": sum(1 for w in writes if w.attempts > 1),
            "rows_for_acknowledged": sum(rows.get(w.marker, 0) for w in acked),
            "acknowledged_lost": sum(1 for w in acked if rows.get(w.marker, 0) == 0
                                     or w.line_id not in existing),
            "keys_with_several_rows": sum(1 for w in writes if rows.get(w.marker, 0) > 1),
            "unacknowledged": len(unacked),
            "unacknowledged_with_a_row": sum(1 for w in unacked if rows.get(w.marker, 0) == 1),
            "retried_writes_not_one_row": sum(1 for w in acked if w.attempts > 1
                                              and rows.get(w.marker, 0) != 1),
            "read_back": sum(1 for w in acked if w.read_back == 200),
            "read_back_missing": sum(1 for w in acked if w.read_back == 404),
            "haproxy_requests": len(logged),
            "haproxy_retried": sum(1 for r in logged if r["retries"] > 0),
            "haproxy_redispatched": sum(1 for r in logged if r["redispatched"]),
            # Answered by HAProxy itself: no server was UP (or the queue timed out).
            "haproxy_no_server": sum(1 for r in logged if r["server"] == "<NOSRV>"),
            "haproxy_terminations": dict(Counter(r["term"] for r in logged
                                                 if r["term"] != "----")),
            "events": phase.events,
        }
        if phase.name == "database restart":
            row.update(database_figures(phase, attempts, db_pool_timeout))
        out.append(row)
    return out


def database_figures(phase: Phase, attempts: list[Attempt], db_pool_timeout: float) -> dict:
    back = phase.database_back
    failed = [a for a in attempts if a.status is None or not 200 <= a.status < 300]
    figures = {
        "status_500": sum(1 for a in attempts if a.status == 500),
        "non_503_failures": sum(1 for a in failed if a.status != 503),
        "503_without_retry_after": sum(1 for a in failed if a.status == 503
                                       and not a.retry_after),
        "answer_budget_s": db_pool_timeout + 1,
        "slower_than_budget": sum(1 for a in attempts if a.seconds > db_pool_timeout + 1),
    }
    if back is not None:
        last_failure_end = max((a.started + a.seconds for a in failed), default=None)
        figures["full_service_after_s"] = (
            0.0 if last_failure_end is None else round(max(0.0, last_failure_end - back), 2))
        figures["failed_after_2s"] = sum(1 for a in failed if a.started > back + 2.0)
        first_failure = min((a.started for a in failed), default=None)
        figures["failures_window_s"] = (
            None if first_failure is None else round(last_failure_end - first_failure, 2))
    return figures


def targets(rows: list[dict]) -> list[dict]:
    """Each target with its figure and whether it was met."""
    by = {r["phase"]: r for r in rows}
    out = []

    def target(phase: str, what: str, met: bool, figure: str) -> None:
        out.append({"phase": phase, "target": what, "met": bool(met), "figure": figure})

    for row in rows:
        target(row["phase"], "nothing acknowledged lost", row["acknowledged_lost"] == 0,
               f"{row['writes_acknowledged']} acknowledged, {row['acknowledged_lost']} "
               f"without their row")
        target(row["phase"], "nothing duplicated", row["keys_with_several_rows"] == 0,
               f"{row['keys_with_several_rows']} keys with more than one row")
        if row["writes_retried"] and row["phase"] != "crash":
            target(row["phase"], "writes retried with the same key end with exactly one row",
                   row["retried_writes_not_one_row"] == 0,
                   f"{row['writes_retried']} writes retried by their clients, "
                   f"{row['retried_writes_not_one_row']} acknowledged without exactly one row")
        target(row["phase"], "a writer reads its acknowledged line right after (never a 404)",
               row["read_back_missing"] == 0,
               f"{row['read_back']} read back, {row['read_back_missing']} missing")
    if "rolling restart" in by:
        r = by["rolling restart"]
        failed = r["requests"] - r["ok"]
        target("rolling restart", "0 failed requests", failed == 0,
               f"{failed} of {r['requests']} not 2xx")
    if "crash" in by:
        r = by["crash"]
        failed = r["requests"] - r["ok"]
        in_flight = r.get("instance_threads")
        target("crash", "only requests in flight on the killed instance fail",
               in_flight is None or failed <= in_flight,
               f"{failed} failed (the killed instance holds at most {in_flight or '?'} "
               f"requests: its maxconn)")
        target("crash", "writes retried with the same key end with exactly one row",
               r["retried_writes_not_one_row"] == 0,
               f"{r['writes_retried']} writes retried by their clients (HAProxy retried "
               f"{r['haproxy_retried']} requests itself), {r['retried_writes_not_one_row']} "
               f"acknowledged without exactly one row")
    r = by.get("database restart")
    if r and "full_service_after_s" in r:
        target("database restart", "no 500s", r["status_500"] == 0,
               f"{r['status_500']} answers 500")
        target("database restart", "failures only 503 with Retry-After",
               r["non_503_failures"] == 0 and r["503_without_retry_after"] == 0,
               f"{r['non_503_failures']} other failures, {r['503_without_retry_after']} 503 "
               f"without Retry-After")
        target("database restart", f"every answer within DB_POOL_TIMEOUT + 1 s "
               f"({r['answer_budget_s']:g} s)", r["slower_than_budget"] == 0,
               f"max {r['max_ms']:.0f} ms, {r['slower_than_budget']} slower")
        target("database restart", "full service 2 s after the database is back",
               r["full_service_after_s"] <= 2.0,
               f"last failure {r['full_service_after_s']} s after it was back")
    return out


def markdown(data: dict) -> str:
    s = data["settings"]
    out = [f"# SayPI fleet, {data['generated_at']}", "",
           f"{s['instances']} instances x {s['workers']} workers x {s['threads']} threads "
           f"behind HAProxy {data['haproxy_version']}; {data['database']}; load: "
           f"{s['clients']} clients, {s['rate']:g} req/s paced (60 % GET conversation, "
           f"20 % list, 20 % POST line with Idempotency-Key, retried with the same key); "
           f"{data['elapsed_seconds']} s in all.", "",
           "| phase | s | requests | 2xx | non-2xx | conn errors | p50 ms | p99 ms | max ms "
           "| writes acked | rows (acked) | lost | dup keys | writes retried by clients "
           "| HAProxy retried |",
           "|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in data["phases"]:
        non2xx = ", ".join(f"{code}: {n}" for code, n in r["statuses"].items()) or "-"
        conn = ", ".join(f"{name}: {n}" for name, n in r["connection_errors"].items()) or "-"
        out.append(f"| {r['phase']} | {r['seconds']:g} | {r['requests']} | {r['ok']} | {non2xx} "
                   f"| {conn} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} "
                   f"| {r['writes_acknowledged']} | {r['rows_for_acknowledged']} "
                   f"| {r['acknowledged_lost']} | {r['keys_with_several_rows']} "
                   f"| {r['writes_retried']} | {r['haproxy_retried']} |")
    if data.get("reads_by_pool"):
        pools = ", ".join(f"{pool} {n}" for pool, n in sorted(data["reads_by_pool"].items()))
        out += ["", f"Users' reads by the pool that served them (db_reads_total of every "
                    f"instance that stopped gracefully or ran to the end): {pools}."]
    out += ["", "| phase | target | met | figure |", "|---|---|---|---|"]
    for t in data["targets"]:
        out.append(f"| {t['phase']} | {t['target']} | {'yes' if t['met'] else '**no**'} "
                   f"| {t['figure']} |")
    out += ["", "Events (seconds into the phase):", ""]
    for r in data["phases"]:
        events = "; ".join(f"{e['at']:g}s {e['event']}" for e in r["events"])
        extra = ""
        if r["haproxy_terminations"]:
            extra = f" HAProxy termination states: {r['haproxy_terminations']}."
        if r["haproxy_no_server"]:
            extra += (f" {r['haproxy_no_server']} answered by HAProxy itself (no server UP: "
                      f"its JSON 503 with Retry-After).")
        if r["unacknowledged"]:
            extra += (f" {r['unacknowledged']} writes given up unacknowledged, "
                      f"{r['unacknowledged_with_a_row']} of them with a row.")
        out.append(f"- **{r['phase']}**: {events or '-'}.{extra}")
    return "\n".join(out) + "\n"


# --- the command ----------------------------------------------------------------------------
def fleet(env: Mapping[str, str], argv: list[str] | None = None) -> int:
    if argv and argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    settings = FleetSettings.from_env(env)
    logging.basicConfig(level=logging.WARNING)
    RESULTS.mkdir(exist_ok=True)
    harness = Fleet(env, settings)
    load: LoadGenerator | None = None
    try:
        harness.prepare()
        load = LoadGenerator(harness.haproxy.port, harness.seeded, settings.clients,
                             settings.rate, settings.write_give_up_seconds)
        phases = run_phases(harness, load)
        load.stop(timeout=settings.write_give_up_seconds + 15)
        harness.say(f"load stopped: {len(load.attempts)} requests, {len(load.writes)} writes")
        time.sleep(1.0)  # HAProxy's last log lines
        for instance in harness.instances:
            harness.count_reads(instance)
        rows, existing = count_rows(harness.db.dsn, load.writes)
        proxy_log = haproxy_log(harness.haproxy.log_path)
        figures = summarize(phases, load, rows, existing, proxy_log, settings.db_pool_timeout)
        for row in figures:
            row["instance_threads"] = settings.workers * settings.threads
        data = {"generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "settings": settings.as_dict(), "database": harness.db.where,
                "haproxy_version": _haproxy_version(),
                "elapsed_seconds": round(time.monotonic() - harness.started, 1),
                "phases": figures, "targets": targets(figures),
                "reads_by_pool": dict(harness.reads),
                "latency_median_all_ms": round(statistics.median(
                    [a.seconds * 1000 for a in load.attempts]) if load.attempts else 0.0, 1)}
        (RESULTS / "fleet.json").write_text(json.dumps(data, indent=2) + "\n")
        text = markdown(data)
        (RESULTS / "fleet.md").write_text(text)
        print(text)
        harness.keep_logs()
        harness.say("written: bench-results/fleet.md, fleet.json, logs/fleet/")
        return 0
    except (ServerFailed, RuntimeError, HAProxyUnavailable) as exc:
        print(f"bench fleet: {exc}")
        harness.keep_logs()
        return 1
    finally:
        if load is not None:
            load.stop(timeout=5)
        harness.close()


def _haproxy_version() -> str:
    try:
        first = subprocess.run([find_haproxy(), "-v"], capture_output=True, text=True,
                               timeout=10).stdout.splitlines()[0]
        return first.split()[2]
    except (OSError, IndexError, TypeError, subprocess.SubprocessError):
        return "?"


def _free_ports(count: int) -> list[int]:
    """Distinct free ports on 127.0.0.1 (held open together while picked)."""
    probes = []
    try:
        for _ in range(count):
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            probes.append(probe)
        return [p.getsockname()[1] for p in probes]
    finally:
        for probe in probes:
            probe.close()
