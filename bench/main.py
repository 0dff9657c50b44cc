"""`python -m bench`: the default run (every scenario, references, round trips), and the other
commands (scale, sweep, profile, tracing, report, fleet) by name."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from bench import (
    events,
    heavy,
    live,
    overload,
    peer,
    profile,
    report,
    scale,
    sweep,
    tracing,
    webhooks,
)
from bench.fleet.orchestration import fleet
from bench.pgcount import RoundTripCounter
from bench.scenarios import SCENARIOS, read_requests, replay
from bench.seed import grow_conversations
from bench.servers import Server
from bench.session import RESULTS, Bench, interleave, machine_info, publish, with_bench
from bench.settings import BenchSettings, describe

USAGE = """usage: python -m bench COMMAND (run|scale|sweep|profile|tracing|overload|heavy|
                                  events|webhooks|peer|report|fleet|live)

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
  overload fresh GETs' p99 with 200 slow-body connections held, and fresh GETs' statuses
           and latency (503 against DB_POOL_TIMEOUT) while PATCHes wait on a row lock;
           writes bench-results/overload.md and overload.json
  heavy    one user at and beyond the user rate limit reading 1000-line conversations
           that thrash the render cache: the share of the CPU it takes, renders charged to
           the limit and not; writes bench-results/heavy.md and heavy.json
  events   the writes (4, 4b, 5) before and after the event log, interleaved, CPU per
           request and round trips; GET /events with 10 and 1M events; writes
           bench-results/events.md and events.json
  webhooks deliveries per second by one and by two relays to a local receiver and their
           PostgreSQL CPU per delivery, commit-to-delivery p50/p99 at a steady write rate,
           what idle relays cost, and GET/POST (full speed and paced: BENCH_WEBHOOK_GET_RATE,
           BENCH_WEBHOOK_RATE) with 0, 1 and 2 relays, the queue drained before each row;
           writes bench-results/webhooks.md and webhooks.json
  peer     GET /conversations/{id} on the async peer (FastAPI + uvicorn), bare Flask and
           SayPI with limits off / on in Redis / on in PostgreSQL, same bytes checked;
           writes bench-results/peer.md and peer.json
  report   re-render latest.md and latest.png from bench-results/latest.json
  fleet    N instances behind HAProxy under load through a rolling restart, a crash and
           a database restart; writes bench-results/fleet.md and fleet.json
           (`python -m bench fleet --help` lists its knobs)
  live     event streams held by Pushpin: GET load with and without LIVE_IDLE (10000)
           idle subscribers, commit-to-client latency of LIVE_RATE (50) events/s to
           LIVE_FANOUT (1000) subscribers of one conversation, SayPI threads used;
           the streams read by LIVE_CLIENTS (2) client processes; LIVE_PAIRS (3) runs
           with the idle subscribers, each between two without;
           writes bench-results/live.md and live.json

environment (BENCH_QUICK=1 for a smoke run; explicit values win):
"""


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


def run(env: Mapping[str, str]) -> int:
    settings = BenchSettings.from_env(env)
    s = settings
    results: dict[str, dict] = {}
    data: dict = {"generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                  "quick": s.quick, "bench_settings": s.as_dict()}

    def measure(bench: Bench) -> int:
        config = bench.effective_config()
        data["server_settings"] = {
            "worker_class": "app.ops.worker.SayPIWorker (gthread-based, httptools heads)",
            "workers": config.web_concurrency,
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
        data["scale"] = scale.scale(bench)
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
        result = scale.scale(bench)
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
        from app.store import conversations
        theirs = conversations._GET_WITH_LINES
    except (ImportError, AttributeError):
        return None
    return re.sub(r"\s+", " ", theirs).strip() == re.sub(r"\s+", " ", GET_WITH_LINES).strip()


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
        return sweep.sweep(env)
    if command == "heavy":
        return heavy.heavy(env)
    if command == "fleet":
        return fleet(env, argv[1:])
    if command == "tracing":
        return tracing.tracing(env)
    if command == "overload":
        return overload.overload(env)
    if command == "events":
        return events.events(env)
    if command == "webhooks":
        return webhooks.webhooks(env)
    if command == "live":
        return live.live(env, argv[1:])
    if command == "peer":
        return peer.peer(env)
    if command == "profile":
        return profile.profile(env)
    print(USAGE + describe())
    return 2
