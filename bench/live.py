"""`python -m bench live`: event streams held by Pushpin, measured on this machine.

The API's GET load with and without LIVE_IDLE idle subscribers held by Pushpin;
commit-to-client latency of LIVE_RATE events/s fanned out to LIVE_FANOUT
subscribers of one conversation; SayPI's threads used by held streams. Every load
is bounded (LIVE_SECONDS each); results go to bench-results/live.md and live.json.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.crowd import Crowd, CrowdFigures, raise_open_files
from bench.postgres import open_database
from bench.scenarios import build_request_files
from bench.seed import seed
from bench.servers import Server, base_env, children_of, cpu_seconds, python
from bench.wrk import WrkResult, ensure_wrk, run_wrk
from harness import ROOT
from harness.pushpin import Pushpin, ensure_pushpin
from harness.saypi import Server as Relay
from harness.services import free_port

RESULTS = ROOT / "bench-results"
QUIET_SECONDS = 10  # how long SayPI is watched with the streams held and no load
KNOBS = {"LIVE_IDLE": "10000", "LIVE_FANOUT": "1000", "LIVE_RATE": "50", "LIVE_SECONDS": "10",
         "LIVE_WORKERS": "2", "LIVE_THREADS": "4", "LIVE_CLIENTS": "2", "LIVE_PAIRS": "3"}


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _access(log: Path) -> list[tuple[str, float]]:
    """(route, duration ms) of each stream request SayPI answered 200, in order."""
    text = log.read_text(errors="replace")
    return [(m.group(1), float(m.group(2))) for m in re.finditer(
        r'"route": "(/events/stream(?:/next)?)", "status": 200, "duration_ms": ([0-9.]+)',
        text)]


def _direct_open(url: str) -> float | None:
    metrics = httpx.get(url + "/metrics", timeout=10).text
    found = re.search(r"^streams_direct_open (\S+)", metrics, re.MULTILINE)
    return float(found.group(1)) if found else None


def _tree_cpu(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process and its children, by command name."""
    out: dict[str, float] = {}
    for label, pid in pids.items():
        for each in [pid, *children_of(pid)]:
            try:
                with open(f"/proc/{each}/comm") as handle:
                    name = handle.read().strip()
            except OSError:
                continue
            key = f"{label}:{name}" if name != label else label
            out[key] = out.get(key, 0.0) + cpu_seconds(each)
    return out


def _lag(relay_url: str) -> tuple[float, float, dict[float, float]]:
    """The relay's publish lag histogram (commit to Pushpin's accepting): sum, count,
    cumulative count per upper bound."""
    text = httpx.get(relay_url + "/metrics", timeout=10).text
    total = sum(float(v) for v in re.findall(
        r"^saypi_stream_publish_lag_seconds_sum\{[^}]*\} (\S+)", text, re.MULTILINE))
    count = sum(float(v) for v in re.findall(
        r"^saypi_stream_publish_lag_seconds_count\{[^}]*\} (\S+)", text, re.MULTILINE))
    buckets: dict[float, float] = {}
    for bound, value in re.findall(
            r'^saypi_stream_publish_lag_seconds_bucket\{[^}]*le="([^"]+)"[^}]*\} (\S+)', text,
            re.MULTILINE):
        buckets[float(bound)] = buckets.get(float(bound), 0.0) + float(value)
    return total, count, buckets


def _lag_between(before: tuple, after: tuple) -> dict:
    """Mean and the bucket bounds of p50 and p99 of the lags recorded between two reads."""
    count = after[1] - before[1]
    if count <= 0:
        return {"events": 0}
    cumulative = sorted((bound, after[2][bound] - before[2].get(bound, 0.0))
                        for bound in after[2])

    def bound_of(q: float) -> float:
        return next((b for b, c in cumulative if c >= q * count), float("inf"))

    return {"events": int(count), "mean_ms": round((after[0] - before[0]) / count * 1000, 1),
            "p50_at_most_ms": bound_of(0.5) * 1000, "p99_at_most_ms": bound_of(0.99) * 1000}


def _machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (every process, ours or not)."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _crowd_dict(figures: CrowdFigures, wanted: int, open_seconds: float) -> dict:
    return {"wanted": wanted, "held": figures.held, "failed": figures.failed,
            "retried": figures.retried, "refusals": figures.refusals,
            "open_seconds": round(open_seconds, 1)}


def _pairs(runs: list[tuple[str, WrkResult]], busy: list[dict[str, float]]) -> dict:
    """Each run with the subscribers against the mean of the two runs without beside it.

    Returns the change of each pair in req/s, p99 and SayPI's CPU per request (its cores
    busy over req/s), and the median change over the pairs, the figure to read: on this
    shared machine two runs without, a minute apart, can differ by 10-20 %.
    """
    changes: dict[str, list[float]] = {"rps": [], "p99": [], "saypi_cpu_us": []}

    def figures(i: int) -> dict[str, float]:
        result, cores = runs[i][1], busy[i]["saypi"]
        return {"rps": result.rps, "p99": result.latency_ms["p99"],
                "saypi_cpu_us": 1e6 * cores / result.rps if result.rps else 0.0}

    for i, (label, _) in enumerate(runs):
        if label != "with" or i == 0 or i + 1 >= len(runs):
            continue
        held, before, after = figures(i), figures(i - 1), figures(i + 1)
        for key, values in changes.items():
            base = (before[key] + after[key]) / 2
            values.append(round((held[key] / base - 1) * 100, 1) if base else 0.0)
    def median(key: str) -> float | None:
        return round(statistics.median(changes[key]), 1) if changes[key] else None

    return {"pair_changes_percent": changes, "rps_change_percent": median("rps"),
            "p99_change_percent": median("p99"),
            "saypi_cpu_change_percent": median("saypi_cpu_us")}


def live(env: Mapping[str, str], argv: list[str] | None = None) -> int:
    knobs = {name: float(env.get(name, default)) for name, default in KNOBS.items()}
    idle, fanout = int(knobs["LIVE_IDLE"]), int(knobs["LIVE_FANOUT"])
    rate, seconds = knobs["LIVE_RATE"], int(knobs["LIVE_SECONDS"])
    workers, threads = int(knobs["LIVE_WORKERS"]), int(knobs["LIVE_THREADS"])
    clients = int(knobs["LIVE_CLIENTS"])
    say: Callable[[str], None] = lambda message: print(f"[live] {message}", flush=True)  # noqa: E731
    logging.basicConfig(level=logging.WARNING)
    # 10,000 streams: the client processes and the Pushpin started below inherit the limit.
    open_files = raise_open_files()
    if open_files[0] < idle + 1000:
        say(f"RLIMIT_NOFILE is {open_files[0]}: too few for {idle} streams")
        return 2
    work = Path(tempfile.mkdtemp(prefix="saypi-live-"))
    grip_key, secret = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    db = open_database(env, logging.getLogger("bench.live"))
    started: list = []
    crowds: list[Crowd] = []
    try:
        seeded = seed(db.dsn, users=20, conversations=200, lines=10, cap_lines=10,
                      phrase_count=50, secret=secret)
        files = build_request_files(work, seeded)
        port = free_port()
        server_env = base_env(env, set(), str(work))
        server_env.update({"DATABASE_URL": db.dsn, "HOST": "127.0.0.1", "PORT": str(port),
                           "USER_SECRETS": secret, "GRIP_KEY": grip_key,
                           "WEB_CONCURRENCY": str(workers), "THREADS": str(threads),
                           "DB_POOL_MAX": str(threads), "RATE_LIMIT_USER_PER_MINUTE": "0",
                           "RATE_LIMIT_IP_PER_MINUTE": "0", "LOG_FORMAT": "json",
                           "PROMETHEUS_MULTIPROC_DIR": str(work / "metrics")})
        server = Server("saypi", [python(), str(ROOT / "run.py"), "serve"], server_env, port,
                        work / "saypi.log", "/health/ready", workers)
        started.append(server)
        server.wait_ready()
        pushpin = Pushpin(ensure_pushpin(say), [f"127.0.0.1:{port}"], grip_key, work)
        started.append(pushpin)
        relay_port = free_port()
        relay = Relay({**server_env, "PORT": str(relay_port), "RELAY_PORT": str(relay_port),
                       "PUSHPIN_PUBLISH_URLS": pushpin.publish_url,
                       "RELAY_POLL_SECONDS": "0.01",
                       "PROMETHEUS_MULTIPROC_DIR": str(work / "relay-metrics")},
                      work / "relay.log", ["relay"]).wait_ready()
        started.append(relay)
        wrk = ensure_wrk(say)
        url = f"http://127.0.0.1:{port}"
        runs: list[tuple[str, WrkResult]] = []
        busy: list[dict[str, float]] = []
        pids = {"pushpin": pushpin.process.pid, "saypi": server.process.pid,
                "relay": relay.process.pid}

        def load(label: str) -> None:
            say(f"GET load {label} subscribers ({seconds} s)")
            machine, ours, started_at = _machine_busy(), _tree_cpu(pids), time.monotonic()
            runs.append((label, run_wrk(wrk, url, files["get"], seconds, 16, 2)))
            elapsed = time.monotonic() - started_at
            spent = {name: value - ours.get(name, 0.0) for name, value in _tree_cpu(pids).items()}
            # Cores busy on average: the whole machine, SayPI's processes, Pushpin's.
            busy.append({"machine": round((_machine_busy() - machine) / elapsed, 2),
                         "saypi": round(sum(v for k, v in spent.items()
                                            if k.startswith("saypi")) / elapsed, 2),
                         "pushpin": round(sum(v for k, v in spent.items()
                                              if k.startswith("pushpin")) / elapsed, 2)})

        # Without, with, without, with, ..., without: each run with the subscribers held is
        # flanked by runs without, so the machine's drift over the bench shows in both sides
        # of every pair. The idle streams are opened afresh for each run with them.
        pairs = max(1, int(knobs["LIVE_PAIRS"]))
        tokens = [token for _, token in seeded.readers] or [seeded.writers[0][1]]
        idle_figures, open_times = None, []
        quiet_requests: list = []
        quiet_cpu: dict[str, float] = {}
        direct_open = None
        load("without")
        for pair in range(pairs):
            crowd = Crowd("127.0.0.1", pushpin.port, clients)
            crowds.append(crowd)
            say(f"opening {idle} idle subscribers through Pushpin ({clients} client "
                f"processes), pair {pair + 1}/{pairs}")
            open_times.append(crowd.open_many(
                [("/events/stream", tokens[n % len(tokens)]) for n in range(idle)], False,
                say=say))
            held = crowd.status()
            say(f"{held['held']} held ({held['failed']} failed) in {open_times[-1]:.1f} s")
            time.sleep(3)  # the last subscriptions' first recoveries (a first hold may conflict)
            if pair == 0:
                # Between requests: no load for a while, the streams held; what SayPI does.
                before_quiet = len(_access(work / "saypi.log"))
                quiet_cpu = _tree_cpu(pids)
                time.sleep(QUIET_SECONDS)
                quiet_cpu = {name: round(seconds_ - quiet_cpu.get(name, 0.0), 2)
                             for name, seconds_ in sorted(_tree_cpu(pids).items())}
                quiet_requests = _access(work / "saypi.log")[before_quiet:]
                direct_open = _direct_open(url)
            load("with")
            figures = crowd.figures()
            if idle_figures is None or figures.held < idle_figures.held:
                idle_figures = figures  # the least held of the pairs is what is reported
            crowd.close()
            crowds.remove(crowd)
            time.sleep(3)
            load("without")
        assert idle_figures is not None
        open_seconds = max(open_times)

        writer_token = seeded.writers[0][1]
        api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {writer_token}"},
                           timeout=10)
        convo = api.post("/conversations", json={"heading": "fan-out"}).json()["id"]
        fan = Crowd("127.0.0.1", pushpin.port, clients)
        crowds.append(fan)
        say(f"opening {fanout} subscribers of one conversation")
        fan.open_many([(f"/events/stream?conversation={convo}", writer_token)] * fanout, True)
        time.sleep(3)
        subscribers = fan.status()["held"]
        say(f"{rate:g} events/s for {seconds} s to {subscribers} subscribers")
        cpu_before, lag_before = _tree_cpu(pids), _lag(relay.url)
        fan.mark()
        written = 0
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            api.post(f"/conversations/{convo}/lines", json={"text": f"fan {written}"})
            written += 1
            pause = start + written / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        write_seconds = time.monotonic() - start
        # Until every delivery is read, or none has come for 5 s (at most 120 s).
        expected = written * subscribers
        drained, seen, quiet_since = time.monotonic(), -1, time.monotonic()
        while time.monotonic() - drained < 120:
            now_read = sum(fan.delivered())
            if now_read >= expected:
                break
            if now_read != seen:
                seen, quiet_since = now_read, time.monotonic()
            elif time.monotonic() - quiet_since > 5:
                break
            time.sleep(0.25)
        drain_seconds = time.monotonic() - start - write_seconds
        cpu_after, lag_after = _tree_cpu(pids), _lag(relay.url)
        fan_figures = fan.figures()
        cpu = {name: round(cpu_after[name] - cpu_before.get(name, 0.0), 2)
               for name in sorted(cpu_after)}
        api.close()
        fan.close()
        crowds.remove(fan)
        latencies = fan_figures.latencies
        stream_ms = [ms for route, ms in _access(work / "saypi.log")]
        compared = _pairs(runs, busy)
        data = {
            "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "settings": {**knobs, "database": db.where, "rlimit_nofile": open_files[0],
                         "load_average": [round(x, 2) for x in os.getloadavg()]},
            "idle": _crowd_dict(idle_figures, idle, open_seconds),
            "api_runs": [{"subscribers": label, **r.as_dict(), "cores_busy": cores}
                         for (label, r), cores in zip(runs, busy, strict=True)],
            **compared,
            "quiet": {"seconds": QUIET_SECONDS, "streams_held": idle_figures.held,
                      "requests": len(quiet_requests),
                      "links": sum(1 for r, _ in quiet_requests if r.endswith("/next")),
                      "streams_direct_open": direct_open, "cpu_seconds": quiet_cpu},
            "fanout": {"subscribers": subscribers, "refusals": fan_figures.refusals,
                       "events": written, "write_seconds": round(write_seconds, 2),
                       "deliveries": fan_figures.deliveries,
                       "expected": expected, "drain_seconds": round(drain_seconds, 1),
                       "cpu_seconds": cpu, "publish_lag": _lag_between(lag_before, lag_after),
                       "p50_ms": round(_percentile(latencies, 0.5) * 1000, 1),
                       "p99_ms": round(_percentile(latencies, 0.99) * 1000, 1),
                       "max_ms": round(max(latencies, default=0) * 1000, 1),
                       "client_processes": clients,
                       "client_cpu_share": fan_figures.cpu_share,
                       "client_deliveries": fan_figures.per_process},
            "stream_request_ms": {"count": len(stream_ms),
                                  "median": round(statistics.median(stream_ms), 1)
                                  if stream_ms else None,
                                  "max": max(stream_ms, default=None)},
        }
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "live.json").write_text(json.dumps(data, indent=2) + "\n")
        text = markdown(data)
        (RESULTS / "live.md").write_text(text)
        print(text)
        return 0
    finally:
        for crowd in crowds:
            crowd.close()
        for part in reversed(started):
            part.stop()
        db.close()
        shutil.rmtree(work, ignore_errors=True)


def markdown(d: dict) -> str:
    f, q = d["fanout"], d["quiet"]
    rows = "\n".join(
        f"| {r['subscribers']} | {r['rps']} | {r['latency_ms'].get('p50')} | "
        f"{r['latency_ms'].get('p99')} | {sum(r['errors'].values())} | "
        f"{r['cores_busy']['machine']} | {r['cores_busy']['saypi']} | "
        f"{r['cores_busy']['pushpin']} |"
        for r in d["api_runs"])
    return f"""# Live streams through Pushpin (`python -m bench live`)

Generated {d['generated_at']} on this machine (2 cores, shared: load average
{d['settings']['load_average']} at the end); SayPI with {d['settings']['LIVE_WORKERS']:g}
workers x {d['settings']['LIVE_THREADS']:g} threads, one Pushpin, one relay, the clients in
{f['client_processes']} processes, all on 127.0.0.1 (RLIMIT_NOFILE
{d['settings']['rlimit_nofile']}).

GET /conversations/{{id}} (wrk, 16 connections), in the order run: without, then
{d['settings']['LIVE_PAIRS']:g} times with {d['idle']['held']} idle subscribers held by
Pushpin (opened afresh each time) followed by without.

| subscribers | req/s | p50 ms | p99 ms | errors | cores busy: machine | SayPI | Pushpin |
|---|---|---|---|---|---|---|---|
{rows}

"Cores busy" is CPU time over the run's wall time: the whole machine (2 cores: whatever
else runs on it counts too), SayPI's processes, Pushpin's. Each run with the subscribers
against the mean of the two runs without beside it, per pair:
req/s {d['pair_changes_percent']['rps']} %, p99 {d['pair_changes_percent']['p99']} %,
SayPI's CPU per request {d['pair_changes_percent']['saypi_cpu_us']} %.
The medians over the pairs: req/s {d['rps_change_percent']} %, p99
{d['p99_change_percent']} %, SayPI's CPU per request {d['saypi_cpu_change_percent']} %.

Idle subscribers: {d['idle']['held']} of {d['idle']['wanted']} held
({d['idle']['failed']} failed for good; refusals retried: {d['idle']['refusals'] or 'none'}),
opened in {d['idle']['open_seconds']} s.

Between requests: over {q['seconds']} s with {q['streams_held']} streams held and no other
load, SayPI answered {q['requests']} stream requests ({q['links']} of them recovery links);
`streams_direct_open` = {q['streams_direct_open']}; CPU seconds meanwhile (Pushpin holding
them, sending their heartbeats): {q['cpu_seconds']}.

Fan-out: {f['events']} events at {d['settings']['LIVE_RATE']:g}/s (written in
{f['write_seconds']} s) to {f['subscribers']} subscribers of one conversation:
{f['deliveries']} of {f['expected']} deliveries read (the last {f['drain_seconds']} s after
the writes), commit (the event's `created_at`) to client p50 {f['p50_ms']} ms, p99
{f['p99_ms']} ms, max {f['max_ms']} ms. The client processes used
{f['client_cpu_share']} of a core each over the measurement (deliveries per process
{f['client_deliveries']}). The relay's publish lag (commit to Pushpin's accepting):
{f['publish_lag']}. CPU seconds over the measurement: {f['cpu_seconds']}.

Stream requests (`/events/stream` and its links): {d['stream_request_ms']['count']},
median {d['stream_request_ms']['median']} ms of a thread, max
{d['stream_request_ms']['max']} ms; none holds a thread once answered.
"""
