"""Orchestration of `python -m bench` (run, sweep, profile, report)."""

from __future__ import annotations

import json
import logging
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from bench import report
from bench.pgcount import RoundTripCounter
from bench.postgres import BenchDatabase, open_database
from bench.scenarios import SCENARIOS, build_request_files, read_requests, replay
from bench.seed import Seeded, grow_conversations, seed
from bench.servers import ROOT, CpuSnapshot, Server, ServerFailed, base_env, python
from bench.settings import BenchSettings, describe
from bench.wrk import WrkResult, WrkUnavailable, ensure_wrk, run_wrk

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
USAGE = """usage: python -m bench [run|scale|sweep|profile|tracing|report|fleet]

  run      (default) every scenario, references included, and scale's rows;
           writes bench-results/latest.*
  scale    GET with the production rate limits on: state in PostgreSQL or Redis, and
           reads on a streaming replica (its own primary, standby and redis-server);
           writes bench-results/scale.md and scale.json
  sweep    GET/list/POST throughput and p99 for several WEB_CONCURRENCY x THREADS
           (pool max = threads); writes bench-results/sweep.md and sweep.json
  profile  py-spy on the SayPI workers while scenario 2 runs; writes
           bench-results/profile-get.md (+ .svg when py-spy can)
  tracing  GET /conversations/{id} with tracing off, on at sample ratio 0.1 and 1.0 (a
           local OTLP sink), and with the collector down; writes bench-results/tracing.*
  events   the writes (4, 4b, 5) before and after the event log, interleaved, CPU per
           request and round trips; GET /events with 10 and 1M events; writes
           bench-results/events.md and events.json
  report   re-render latest.md and latest.png from bench-results/latest.json
  fleet    N instances behind HAProxy under load through a rolling restart, a crash and
           a database restart; writes bench-results/fleet.md and fleet.json
           (`python -m bench fleet --help` lists its knobs)

environment (BENCH_QUICK=1 for a smoke run; explicit values win):
"""


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
        self.postmaster = _postmaster_pid(self.db.dsn)
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
        """Start SayPI (`run.py serve`) or a reference app; waits until every worker answers."""
        port = _free_port()
        env = self.server_env(dsn or self.db.dsn, port, extra)
        config = self.effective_config(extra)
        if kind == "saypi":
            argv, ready = [python(), str(ROOT / "run.py"), "serve"], "/health/ready"
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
        "worker_balance": round(min(_balance(r) for r in runs), 2),
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


def _balance(result: WrkResult) -> float:
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


def render_cache_counts(server: Server) -> tuple[float, float]:
    status, body = server.get("/metrics")
    if status != 200:
        return (0.0, 0.0)
    values = {}
    for line in body.decode().splitlines():
        name, _, value = line.partition(" ")
        if name in ("cowsay_render_cache_hits_total", "cowsay_render_cache_misses_total"):
            values[name] = float(value)
    return (values.get("cowsay_render_cache_hits_total", 0.0),
            values.get("cowsay_render_cache_misses_total", 0.0))


def count_round_trips(bench: Bench, results: dict) -> dict:
    """Untimed: SayPI and the read reference behind the counting proxy.

    One worker each (same threads and pool), so that the warm-up pass reaches
    the worker that is then counted: every scenario's first N requests are
    sent twice, and the second pass is the figure (per-worker caches warm,
    statements already prepared); the first pass is kept as `cold`. The
    pool's background checks are off, so every statement seen is a request's.
    """
    n = bench.settings.count_requests
    counter = RoundTripCounter(bench.db.dsn)
    counts: dict[str, dict] = {}
    try:
        extra = {"DB_POOL_CHECK_INTERVAL": "3600", "WEB_CONCURRENCY": "1"}
        saypi = bench.start("saypi", dsn=counter.dsn, extra=extra)
        read = bench.start("read", dsn=counter.dsn, extra=extra)
        plan = [("animals", saypi), ("get", saypi), ("list", saypi), ("post_line", saypi),
                ("post_batch", saypi), ("mix", saypi), ("get_cap", saypi), ("ref_get", read),
                ("ref_get_cap", read)]
        for key, server in plan:
            spec = SCENARIOS[key]
            requests = read_requests(bench.files[spec.file])
            passes = []
            count = max(10, n // 10) if key.endswith("cap") else n
            for _ in range(2):
                before = counter.snapshot()
                statuses = replay(server.port, requests, count)
                time.sleep(0.1)
                passes.append((counter.snapshot() - before, statuses))
            (cold, _), (warm, statuses) = passes
            total = sum(warm.values())
            counts[key] = {"requests": count, "round_trips": total,
                           "per_request": round(total / count, 3),
                           "cold_per_request": round(sum(cold.values()) / count, 3),
                           "statuses": {str(k): v for k, v in statuses.items()},
                           "statements": {sql: round(c / count, 3) for sql, c in
                                          warm.most_common()}}
            bench.say(f"  {key:<11} {total / count:.2f} round trips per request "
                      f"(first pass {sum(cold.values()) / count:.2f})")
        bench.stop(saypi)
        bench.stop(read)
    finally:
        counter.close()
    counts["hello"] = {"requests": 0, "round_trips": 0, "per_request": 0.0,
                       "cold_per_request": 0.0, "statements": {}, "note": "no database"}
    for key, value in counts.items():
        for target in (key, {"get": "get_paced", "list": "list_paced"}.get(key),
                       "list_large" if key == "list" else None):
            if target and target in results:
                results[target]["round_trips"] = value["per_request"]
    return counts


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


def run(env: Mapping[str, str]) -> int:
    settings = BenchSettings.from_env(env)
    s = settings
    results: dict[str, dict] = {}
    data: dict = {"generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                  "quick": s.quick, "bench_settings": s.as_dict()}

    def measure(bench: Bench) -> int:
        config = bench.effective_config()
        data["server_settings"] = {
            "worker_class": "gthread", "workers": config.web_concurrency,
            "threads": config.threads, "db_pool_min": config.db_pool_min,
            "db_pool_max": config.db_pool_max, "reuse_port": config.reuse_port,
            "render_cache_size": config.render_cache_size, "log_level": config.log_level,
            "log_format": config.log_format, "rate_limits": "off (0)"}
        data["machine"] = machine_info(bench)
        data["database"] = bench.db.where
        data["seed"] = bench.seeded.stats
        data["query_matches_reference"] = query_matches_reference()

        hello = bench.start("hello")
        read = bench.start("read")
        saypi = bench.start("saypi")
        fresh_rss = saypi.worker_rss()
        for key, server in (("hello", hello), ("ref_get", read), ("ref_get_cap", read),
                            ("animals", saypi), ("get", saypi), ("list", saypi),
                            ("get_cap", saypi), ("post_line", saypi), ("post_batch", saypi),
                            ("mix", saypi)):
            bench.check(server, key, 1 if key.endswith("cap") else 20)
        data["same_body_as_reference"] = same_bodies(bench, saypi, read)

        bench.say("warm-ups, and the 1000-line conversation (SayPI and the reference)")
        # Every SayPI scenario is warmed up first. The 1000-line reads run before the
        # memory window too: their large transient allocations set the workers' RSS
        # high-water mark once, which is not what the memory target looks for (a leak).
        for key, server in (("post_line", saypi), ("post_batch", saypi), ("mix", saypi)):
            bench.measure(server, SCENARIOS[key].file, s.warmup_seconds)
        interleave(bench, [("ref_get_cap", read, None), ("get_cap", saypi, None)], s.runs,
                   results)
        plan = [("hello", hello, None), ("animals", saypi, None), ("ref_get", read, None),
                ("get", saypi, None), ("list", saypi, None)]
        for key, server, rate in plan:
            bench.measure(server, SCENARIOS[key].file, s.warmup_seconds, rate)
        time.sleep(1.5)
        rss_before, served_before = saypi.worker_rss(), bench.served[saypi.name]
        timeline = []

        def rss_point(label: str) -> None:
            rss = saypi.worker_rss()
            timeline.append({"after": label, "requests": bench.served[saypi.name] - served_before,
                             "rss_mb": [round(rss[pid] / 2**20, 1) for pid in sorted(rss)]})

        rss_point("warm-ups and the 1000-line runs")
        bench.say("main scenarios, interleaved with the references")
        hits0 = render_cache_counts(saypi)
        interleave(bench, plan, s.runs, results, warmup=False)
        time.sleep(1.5)
        hits1 = render_cache_counts(saypi)
        hits, misses = hits1[0] - hits0[0], hits1[1] - hits0[1]
        data["render_cache"] = {
            "hits": hits, "misses": misses,
            "hit_rate": round(hits / (hits + misses), 5) if hits + misses else None,
            "window": "timed runs of scenarios 1-3 and the references (only scenario 2 "
                      "renders), after warm-up",
            "cumulative_hits": hits1[0], "cumulative_misses": hits1[1]}
        rss_point("scenarios 1-3")

        bench.say("scenarios 2 and 3 paced at half of their max throughput")
        interleave(bench, [("get_paced", saypi, results["get"]["rps"] / 2),
                           ("list_paced", saypi, results["list"]["rps"] / 2)], s.runs, results)
        rss_point("paced runs")

        bench.say("writes")
        interleave(bench, [("post_line", saypi, None), ("post_batch", saypi, None),
                           ("mix", saypi, None)], s.runs, results)
        rss_point("scenarios 4-5")

        served = bench.served[saypi.name] - served_before
        if served < s.memory_requests:
            missing = s.memory_requests - served
            seconds = max(2, min(600, round(missing / max(results["mix"]["rps"], 1) * 1.05)))
            bench.say(f"memory: {served} requests since the first RSS reading; {seconds}s "
                      f"more of the mix")
            bench.measure(saypi, "mix", seconds)
            served = bench.served[saypi.name] - served_before
            rss_point("more of the mix")
        time.sleep(1.0)
        rss_after = saypi.worker_rss()
        data["memory"] = memory_figures(fresh_rss, rss_before, rss_after, served)
        data["memory"]["timeline"] = timeline
        bench.say(f"memory: {served} requests between the RSS readings; worst growth "
                  f"{data['memory']['max_growth_pct']}%")
        bench.stop(read)

        bench.say(f"growing the table to {s.large_conversations} conversations")
        data["large_seed"] = grow_conversations(bench.db.dsn, s.large_conversations,
                                                bench.seeded.readers)
        bench.say(f"  {data['large_seed']}")
        drift: dict[str, dict] = {}
        interleave(bench, [("hello", hello, None), ("list_large", saypi, None)], s.runs,
                   drift)
        results["list_large"] = drift["list_large"]
        data["hello_after_growth"] = drift["hello"]
        bench.stop(saypi)
        bench.stop(hello)

        bench.say(f"counting database round trips ({s.count_requests} requests per scenario, "
                  f"through the counting proxy, untimed)")
        data["round_trips"] = count_round_trips(bench, results)
        bench.say("scaling past one database: rate-limit stores and a replica")
        from bench.scale import scale  # it imports this module

        data["scale"] = scale(bench)
        data["scenarios"] = results
        data["elapsed_seconds"] = round(time.monotonic() - bench.started, 1)
        data["notes"] = bench.notes
        report.finish(data, results_dir=RESULTS)
        print(report.markdown(data))
        bench.say(f"written: bench-results/latest.md, latest.json, latest.png "
                  f"({data['elapsed_seconds']}s in all)")
        return 0

    return with_bench(env, settings, measure)


def run_scale(env: Mapping[str, str]) -> int:
    """`python -m bench scale`: only the rows of scaling past one database."""
    settings = BenchSettings.from_env(env)

    def measure(bench: Bench) -> int:
        from bench.scale import scale

        result = scale(bench)
        result["generated_at"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        result["quick"] = settings.quick
        return publish("scale", result, "\n".join(report.scale_markdown(result)) + "\n")

    return with_bench(env, settings, measure)


def memory_figures(fresh: dict, before: dict, after: dict, served: int) -> dict:
    workers = []
    for pid in sorted(before):
        b, a = before[pid], after.get(pid, 0)
        workers.append({"pid": pid, "rss_fresh_mb": round(fresh.get(pid, 0) / 2**20, 1),
                        "rss_before_mb": round(b / 2**20, 1), "rss_after_mb": round(a / 2**20, 1),
                        "growth_pct": round(100 * (a - b) / b, 2) if b else None})
    growths = [w["growth_pct"] for w in workers if w["growth_pct"] is not None]
    return {"requests": served, "workers": workers,
            "max_growth_pct": max(growths) if growths else None,
            "same_workers": sorted(before) == sorted(after),
            "workload": "scenarios 1-5 and the paced runs on the 10k data set (topped up "
                        "with the mix when short), after a warm-up of each and after the "
                        "1000-line runs"}


def same_bodies(bench: Bench, saypi: Server, read: Server) -> dict:
    """SayPI's and the reference's GET /conversations/{id} bodies, compared byte for byte."""
    seeded = bench.seeded
    targets = [*seeded.read_conversations[:5], seeded.cap_conversation]
    same = 0
    for token, cid in targets:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        a = saypi.get(f"/conversations/{cid}", headers)
        b = read.get(f"/conversations/{cid}", headers)
        same += a == b
    return {"compared": len(targets), "identical": same}


def query_matches_reference() -> bool | None:
    import re

    from bench.reference_apps import GET_WITH_LINES

    try:
        from app.repo import conversations
        theirs = conversations._GET_WITH_LINES
    except (ImportError, AttributeError):
        return None
    return re.sub(r"\s+", " ", theirs).strip() == re.sub(r"\s+", " ", GET_WITH_LINES).strip()


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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _postmaster_pid(dsn: str) -> int | None:
    """The local postmaster's pid (the parent of our backend), to count its CPU as ours."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            with open(f"/proc/{backend}/stat") as handle:
                raw = handle.read()
            return int(raw[raw.rfind(")") + 2:].split()[1])
    except (OSError, psycopg.Error, ValueError):
        return None


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through `finally`: servers and database stop


def main(argv: list[str], env: Mapping[str, str]) -> int:
    logging.basicConfig(level=logging.WARNING)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, _exit_on_signal)
    command = argv[0] if argv else "run"
    if command in ("-h", "--help", "help"):
        print(USAGE + describe())
        return 0
    if command == "run":
        return run(env)
    if command == "report":
        return report.rerender(RESULTS)
    if command == "scale":
        return run_scale(env)
    if command == "sweep":
        from bench.sweep import sweep

        return sweep(env)
    if command == "fleet":
        from bench.fleet import fleet

        return fleet(env, argv[1:])
    if command == "tracing":
        from bench.tracing import tracing

        return tracing(env)
    if command == "events":
        from bench.events import events

        return events(env)
    if command == "profile":
        from bench.profile import profile

        return profile(env)
    print(USAGE + describe())
    return 2
