"""One benchmark session (`Bench`): its database, seeded data, servers, wrk runs and results."""

from __future__ import annotations

import json
import logging
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import psycopg

from bench.postgres import BenchDatabase, open_database
from bench.scenarios import SCENARIOS, build_request_files, read_requests, replay
from bench.seed import Seeded, seed
from bench.servers import CpuSnapshot, Server, ServerFailed, base_env, python
from bench.settings import BenchSettings
from bench.wrk import WrkResult, WrkUnavailable, ensure_wrk, run_wrk
from harness import ROOT
from harness.services import free_port

RESULTS = ROOT / "bench-results"


def publish(stem: str, data: dict, markdown: str) -> int:
    """Write bench-results/STEM.json and STEM.md, print the markdown; the command's status."""
    (RESULTS / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown)
    print(markdown)
    return 0
# Settings the benchmark decides; every other SayPI setting passes through from the environment.
CONTROLLED = {"APP_ENV", "DATABASE_URL", "HOST", "PORT", "DATA_DIR", "USER_SECRETS",
              "PROMETHEUS_MULTIPROC_DIR", "RATE_LIMIT_USER_PER_MINUTE", "RATE_LIMIT_USER_BURST",
              "RATE_LIMIT_IP_PER_MINUTE", "RATE_LIMIT_IP_BURST", "FAULT_INJECTION"}
class Bench:
    """One benchmark session: its database, seeded data, servers and scratch directory."""

    def __init__(self, env: Mapping[str, str], settings: BenchSettings):
        self.env = env
        self.settings = settings
        self.started = time.monotonic()
        self.work = Path(tempfile.mkdtemp(prefix="saypi-bench-"))
        self.logger = logging.getLogger("bench")
        self.servers: list[Server] = []
        self.secret = secrets.token_urlsafe(32)
        self.db: BenchDatabase | None = None
        self.seeded: Seeded | None = None
        self.files: dict[str, Path] = {}
        self.wrk = ""
        self.postmaster: int | None = None
        self.notes: list[str] = []
        self.served: dict[str, int] = {}  # requests wrk completed, per server name
        self.extra_roots: dict[int, str] = {}  # other processes' CPU groups (an OTLP sink)
        self._count = 0

    # --- output ----------------------------------------------------------------------
    def say(self, message: str) -> None:
        print(f"[bench {time.monotonic() - self.started:6.1f}s] {message}", flush=True)

    # --- setup ------------------------------------------------------------------------
    def prepare(self) -> None:
        self.wrk = ensure_wrk(self.say)
        self.say(f"wrk: {self.wrk}")
        self.say("starting PostgreSQL" + (" (a new database on DATABASE_URL's server)"
                                          if self.env.get("DATABASE_URL") else " (embedded)"))
        self.db = open_database(self.env, self.logger)
        self.postmaster = postmaster_pid(self.db.dsn)
        s = self.settings
        self.say(f"seeding {s.users} users, {s.conversations} conversations x {s.lines} lines, "
                 f"one of {s.cap_lines} lines")
        self.seeded = seed(self.db.dsn, s.users, s.conversations, s.lines, s.cap_lines,
                           s.phrases, self.secret)
        self.say(f"seeded in {self.seeded.stats['seconds']}s: {self.seeded.stats}")
        self.files = build_request_files(self.work, self.seeded)

    def server_env(self, dsn: str, port: int, extra: Mapping[str, str] | None = None
                   ) -> dict[str, str]:
        env = base_env(self.env, CONTROLLED, str(self.work))
        self._count += 1
        env.update({
            "APP_ENV": "production", "DATABASE_URL": dsn, "HOST": "127.0.0.1",
            "PORT": str(port), "USER_SECRETS": self.secret,
            "DATA_DIR": str(self.work / "data"),
            "PROMETHEUS_MULTIPROC_DIR": str(self.work / f"metrics-{self._count}"),
            "RATE_LIMIT_USER_PER_MINUTE": "0", "RATE_LIMIT_IP_PER_MINUTE": "0",
        })
        env.update(extra or {})
        return env

    def effective_config(self, extra: Mapping[str, str] | None = None):
        from app.config import Config

        return Config.from_env(self.server_env("postgresql://", 1, extra), [])

    def start(self, kind: str, dsn: str | None = None, extra: Mapping[str, str] | None = None
              ) -> Server:
        """Start SayPI (`run.py serve`), a reference app or the async peer; waits until
        every worker answers."""
        port = free_port()
        env = self.server_env(dsn or self.db.dsn, port, extra)
        config = self.effective_config(extra)
        if kind == "saypi":
            argv, ready = [python(), str(ROOT / "run.py"), "serve"], "/health/ready"
        elif kind == "peer":
            argv, ready = [python(), "-m", "bench.peer_app"], "/ready"
        else:
            argv, ready = [python(), "-m", "bench.reference_apps", kind], "/ready"
        name = f"{kind}-{self._count}"
        server = Server(name, argv, env, port, self.work / f"{name}.log", ready,
                        config.web_concurrency)
        self.servers.append(server)
        server.wait_ready()
        self.say(f"{name} ready on port {port}, workers {server.worker_pids()}")
        return server

    def stop(self, server: Server) -> None:
        server.stop()
        self._keep_log(server)
        if server in self.servers:
            self.servers.remove(server)

    def _keep_log(self, server: Server) -> None:
        """Head and tail of a server's log go to bench-results/logs/ (the rest: access lines)."""
        target = RESULTS / "logs"
        target.mkdir(parents=True, exist_ok=True)
        try:
            with open(server.log_path, "rb") as handle:
                head = handle.read(20000)
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(len(head), size - 20000))
                tail = handle.read()
        except OSError:
            return
        name = server.name.rsplit("-", 1)[0]
        text = head + (b"\n[... middle cut by the benchmark ...]\n" if tail else b"") + tail
        (target / f"{name}.log").write_bytes(text)

    def close(self) -> None:
        for server in list(self.servers):
            try:
                self.stop(server)
            except Exception as exc:
                self.say(f"stopping {server.name} failed: {exc}")
        if self.db is not None:
            self.db.close()
        shutil.rmtree(self.work, ignore_errors=True)

    # --- measuring ---------------------------------------------------------------------
    def cpu_roots(self, measured: Server) -> dict[int, str]:
        roots = {s.process.pid: "idle_servers" for s in self.servers}
        roots.update(self.extra_roots)
        roots[measured.process.pid] = "app"
        roots[os.getpid()] = "wrk"  # the benchmark itself: nearly all of it is wrk, reaped
        if self.postmaster:
            roots[self.postmaster] = "postgres"
        return roots

    def measure(self, server: Server, file: str, seconds: int, rate: float | None = None
                ) -> WrkResult:
        roots = self.cpu_roots(server)
        before, cpu_before = CpuSnapshot(roots), server.worker_cpu()
        result = run_wrk(self.wrk, server.url, self.files[file], seconds,
                         self.settings.connections, self.settings.wrk_threads, rate)
        after, cpu_after = CpuSnapshot(roots), server.worker_cpu()
        result.cpu_seconds = after.since(before)
        self.served[server.name] = self.served.get(server.name, 0) + result.requests
        result.foreign_cpu_seconds = result.cpu_seconds["other"]
        result.worker_cpu_seconds = {str(pid): round(cpu_after[pid] - cpu_before.get(pid, 0), 2)
                                     for pid in cpu_after}
        return result

    def check(self, server: Server, scenario: str, count: int = 20) -> None:
        """The scenario's requests get the expected statuses before anything is timed."""
        spec = SCENARIOS[scenario]
        statuses = replay(server.port, read_requests(self.files[spec.file]), count)
        wrong = {code: n for code, n in statuses.items() if code not in spec.expect}
        if wrong:
            raise RuntimeError(f"{scenario}: unexpected statuses {dict(statuses)} "
                               f"(expected {spec.expect}); server log:\n{server.log_tail()}")


def summarize(runs: list[WrkResult], cpus: int) -> dict:
    """Median of each figure over the runs (requests/s, p50, p99 independently)."""
    def med(values):
        return round(statistics.median(values), 3)

    return {
        "rps": round(statistics.median(r.rps for r in runs), 1),
        "p50_ms": med([r.latency_ms["p50"] for r in runs]),
        "p90_ms": med([r.latency_ms["p90"] for r in runs]),
        "p99_ms": med([r.latency_ms["p99"] for r in runs]),
        "p999_ms": med([r.latency_ms["p999"] for r in runs]),
        "requests": sum(r.requests for r in runs),
        "errors": sum(r.failed for r in runs),
        "foreign_cpu_pct": round(max(100 * r.foreign_cpu_seconds / (r.seconds * cpus)
                                     for r in runs), 1),
        "worker_balance": round(min(worker_balance(r) for r in runs), 2),
        "cpu_us_per_request": cpu_per_request(runs),
        "target_rps": runs[0].target_rps,
        "runs": [r.as_dict() for r in runs],
    }


def cpu_per_request(runs: list[WrkResult]) -> dict[str, float]:
    """Median over runs of CPU microseconds per request, per process group."""
    groups = ("app_user", "app_system", "postgres_user", "postgres_system",
              "postgres_background_user", "postgres_background_system", "wrk_user",
              "wrk_system", "other")
    out = {}
    for group in groups:
        values = [1e6 * r.cpu_seconds.get(group, 0.0) / r.requests for r in runs if r.requests]
        out[group] = round(statistics.median(values), 1) if values else None
    app = [1e6 * (r.cpu_seconds.get("app_user", 0) + r.cpu_seconds.get("app_system", 0))
           / r.requests for r in runs if r.requests]
    pg = [1e6 * (r.cpu_seconds.get("postgres_user", 0) + r.cpu_seconds.get("postgres_system", 0))
          / r.requests for r in runs if r.requests]
    out["app"] = round(statistics.median(app), 1) if app else None
    out["postgres"] = round(statistics.median(pg), 1) if pg else None
    return out


def worker_balance(result: WrkResult) -> float:
    """The least busy worker's CPU over the busiest's (1.0: even; near 0: one did it all)."""
    values = list(result.worker_cpu_seconds.values())
    if len(values) < 2 or max(values) <= 0:
        return 1.0
    return min(values) / max(values)


def interleave(bench: Bench, plan: list[tuple[str, Server, float | None]], runs: int,
               results: dict, warmup: bool = True) -> None:
    """Warm each scenario up, then run them in turn `runs` times, so drift hits them alike."""
    s = bench.settings
    if warmup:
        for key, server, rate in plan:
            bench.measure(server, SCENARIOS[key].file, s.warmup_seconds, rate)
    collected: dict[str, list[WrkResult]] = {key: [] for key, _, _ in plan}
    for rep in range(runs):
        for key, server, rate in plan:
            result = bench.measure(server, SCENARIOS[key].file, s.seconds, rate)
            collected[key].append(result)
            bench.say(f"  {key:<11} run {rep + 1}/{runs}: {result.rps:8.1f} req/s  "
                      f"p50 {result.latency_ms['p50']:6.2f} ms  p99 "
                      f"{result.latency_ms['p99']:6.2f} ms  errors {result.failed}  "
                      f"other CPU {result.foreign_cpu_seconds:.1f}s")
    cpus = os.cpu_count() or 1
    for key, _, _ in plan:
        spec = SCENARIOS[key]
        results[key] = {"title": spec.title, "app": spec.app, **summarize(collected[key], cpus)}


def with_bench(env: Mapping[str, str], settings: BenchSettings,
               work: Callable[[Bench], int]) -> int:
    """Prepare a Bench (database, data, wrk), run `work` on it and always clean up.

    Every command (run, sweep, profile) goes through here, so a failure is one
    line and exit status 1, and nothing the benchmark started outlives it.
    """
    bench = Bench(env, settings)
    RESULTS.mkdir(exist_ok=True)
    try:
        try:
            bench.prepare()
        except WrkUnavailable as exc:
            print(f"bench: {exc}")
            return 1
        return work(bench)
    except (ServerFailed, RuntimeError) as exc:
        print(f"bench: {exc}")
        return 1
    finally:
        bench.close()


def machine_info(bench: Bench) -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle
                          if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        first = subprocess.run([bench.wrk, "-v"], capture_output=True, text=True,
                               timeout=10).stdout.splitlines()[0]
        wrk_version = first.split(" Copyright")[0].strip()
    except (OSError, IndexError, subprocess.SubprocessError):
        wrk_version = "?"
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "postgres": bench.db.server_version(),
            "wrk": wrk_version, "loadavg_at_start": os.getloadavg()}


def postmaster_pid(dsn: str) -> int | None:
    """The local postmaster's pid (the parent of our backend), to count its CPU as ours."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            with open(f"/proc/{backend}/stat") as handle:
                raw = handle.read()
            return int(raw[raw.rfind(")") + 2:].split()[1])
    except (OSError, psycopg.Error, ValueError):
        return None
