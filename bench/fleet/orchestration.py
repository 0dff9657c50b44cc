"""`python -m bench fleet` (`make fleet`): SayPI instances behind a real HAProxy, under load,
through a rolling restart, a crash and a database restart.

On 127.0.0.1 only and bounded in time: one PostgreSQL (embedded, or a new
database on DATABASE_URL's server), N instances of `run.py serve` each on its
own port (REUSE_PORT is on by default: two instances on one port would share
its traffic), and deploy/haproxy/haproxy.cfg with one server line per
instance (harness/haproxy.py). A Python load generator (threads, each with one
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

import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.fleet.analysis import Phase, count_rows, haproxy_log, summarize, targets
from bench.fleet.load import LoadGenerator
from bench.fleet.report import markdown
from bench.fleet.streams import StreamWatch
from bench.fleet.streams import markdown as streams_markdown
from bench.postgres import BenchDatabase, open_database, open_replicated
from bench.seed import Seeded, seed
from bench.servers import Server, ServerFailed, base_env, python
from bench.settings import UNBOUNDED_LIMITS
from harness import ROOT
from harness.haproxy import Backend, HAProxy, HAProxyUnavailable, ensure_haproxy, find_haproxy
from harness.pushpin import Pushpin, PushpinUnavailable, ensure_pushpin
from harness.saypi import Server as Relay

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
        # Pushpin in front of the instances holds event streams; the relay publishes to it.
        self.grip_key = secrets.token_urlsafe(32)
        self.pushpin: Pushpin | None = None
        self.relay: Relay | None = None
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
            "GRIP_KEY": self.grip_key,
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
        self.start_pushpin()

    def start_pushpin(self) -> None:
        """Pushpin in front of every instance (its routes try them in turn), and one relay
        publishing to it (deploy/pushpin/README.md)."""
        self.pushpin = Pushpin(ensure_pushpin(self.say),
                               [f"127.0.0.1:{i.port}" for i in self.instances], self.grip_key,
                               self.work)
        relay_port = _free_ports(1)[0]
        env = self.instance_env(self.instances[0])
        env.update({"PORT": str(relay_port), "RELAY_PORT": str(relay_port),
                    "PUSHPIN_PUBLISH_URLS": self.pushpin.publish_url,
                    "PROMETHEUS_MULTIPROC_DIR": str(self.work / "metrics-relay")})
        self.relay = Relay(env, self.work / "relay.log", ["relay"]).wait_ready()
        self.say(f"Pushpin on port {self.pushpin.port}, the relay publishing to it")

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
        if self.relay is not None:
            self.relay.stop()
        if self.pushpin is not None:
            self.pushpin.stop()
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


# --- phases ---------------------------------------------------------------------------------
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
        writers = sorted({token for token, _ in harness.seeded.write_conversations})
        watch = StreamWatch(harness.pushpin.url, harness.haproxy.url, writers[:4], 2)
        watch.start()
        phases = run_phases(harness, load)
        load.stop(timeout=settings.write_give_up_seconds + 15)
        streams = watch.finish(timeout=60)
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
                    [a.seconds * 1000 for a in load.attempts]) if load.attempts else 0.0, 1),
                "streams": streams}
        (RESULTS / "fleet.json").write_text(json.dumps(data, indent=2) + "\n")
        text = markdown(data) + streams_markdown(streams)
        (RESULTS / "fleet.md").write_text(text)
        print(text)
        harness.keep_logs()
        harness.say("written: bench-results/fleet.md, fleet.json, logs/fleet/")
        return 0
    except (ServerFailed, RuntimeError, HAProxyUnavailable, PushpinUnavailable) as exc:
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
