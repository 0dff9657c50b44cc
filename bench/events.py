"""`python -m bench events`: what writing events costs a write, and GET /events at scale.

The writes run on this tree and on the commit before the event log (BENCH_EVENTS_BASELINE
overrides), one database, interleaved run by run so a noisy machine hits both alike;
then round trips per write, and GET /events with 10 and 1,000,000 events.
"""

from __future__ import annotations

import io
import itertools
import os
import subprocess
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path

import psycopg

from bench.pgcount import RoundTripCounter
from bench.scenarios import SCENARIOS, Scenario, read_requests, replay
from bench.servers import Server, python
from bench.session import Bench, interleave, publish, with_bench
from bench.settings import BenchSettings
from bench.wrk import write_requests
from harness import ROOT
from harness.services import free_port

MIGRATION = "app/store/migrations/0004_events.sql"
WRITES = ("post_line", "post_line_spread", "post_batch", "mix")
# Writes must not meet the line cap however long the runs.
EXTRA = {"MAX_LINES_PER_CONVERSATION": "100000000"}
BIG_EVENTS = 1_000_000


def baseline_ref(env: Mapping[str, str]) -> str:
    """The commit to compare with: BENCH_EVENTS_BASELINE, else the parent of the commit
    that added the events migration."""
    if env.get("BENCH_EVENTS_BASELINE"):
        return env["BENCH_EVENTS_BASELINE"]
    # -m --first-parent: a migration that came in with a merge is "added" by that merge.
    added = subprocess.run(["git", "log", "-m", "--first-parent", "--diff-filter=A",
                            "--format=%H", "--", MIGRATION],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    if not added:
        raise RuntimeError(f"{MIGRATION} is not in git history; set BENCH_EVENTS_BASELINE")
    return f"{added[-1]}^"


def extract(ref: str, target: Path) -> Path:
    """The tree of `ref`, written to `target` (git archive)."""
    archive = subprocess.run(["git", "archive", "--format=tar", ref], cwd=ROOT,
                             capture_output=True, check=True).stdout
    target.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target


def start_tree(bench: Bench, name: str, tree: Path, dsn: str | None = None,
               extra: Mapping[str, str] | None = None) -> Server:
    """SayPI from another tree (`run.py serve` there: its own `app` package comes first)."""
    port = free_port()
    env = bench.server_env(dsn or bench.db.dsn, port, {**EXTRA, **(extra or {})})
    config = bench.effective_config(extra)
    server = Server(f"{name}-{port}", [python(), str(tree / "run.py"), "serve"], env, port,
                    bench.work / f"{name}-{port}.log", "/health/ready",
                    int((extra or {}).get("WEB_CONCURRENCY", config.web_concurrency)))
    bench.servers.append(server)
    server.wait_ready()
    bench.say(f"{name} ready on port {port}")
    return server


def count_round_trips(bench: Bench, trees: dict[str, Path]) -> dict:
    """Round trips per write request of each tree, through the counting proxy (untimed)."""
    counter = RoundTripCounter(bench.db.dsn)
    out: dict[str, dict] = {}
    try:
        for label, tree in trees.items():
            server = start_tree(bench, f"count-{label}", tree, counter.dsn,
                                {"DB_POOL_CHECK_INTERVAL": "3600", "WEB_CONCURRENCY": "1"})
            for key in WRITES:
                requests = read_requests(bench.files[SCENARIOS[key].file])
                replay(server.port, requests, 50)  # warm: statements prepared
                before = counter.snapshot()
                replay(server.port, requests[50:], 200)
                time.sleep(0.1)
                trips = sum((counter.snapshot() - before).values())
                out.setdefault(key, {})[label] = round(trips / 200, 3)
            bench.stop(server)
    finally:
        counter.close()
    return out


def grow_events(dsn: str, user_id: int, count: int) -> None:
    """`count` line events for one user, as the writes store them."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO events (user_id, seq, last_seq, type, conversation, data) "
            "SELECT %(user)s, g, g, 'line.created', 1, jsonb_build_array(jsonb_build_array("
            "g, 'default', false, 'Moo.', 0, 'tired', '--', '  ', false)) "
            "FROM generate_series(1, %(count)s) g",
            {"user": user_id, "count": count})
        conn.execute("UPDATE users SET event_seq = %s WHERE id = %s", (count, user_id))
        conn.execute("VACUUM ANALYZE events")


def event_reads(bench: Bench, server: Server) -> dict:
    """GET /events?limit=10 (and a page after a cursor) of a user with 10 and with 1M events."""
    small_token, small_user = token_of(bench, 0)
    big_token, big_user = token_of(bench, 1)
    grow_events(bench.db.dsn, small_user, 10)
    grow_events(bench.db.dsn, big_user, BIG_EVENTS)
    for label, token, user, count in (("events_10", small_token, small_user, 10),
                                      ("events_1m", big_token, big_user, BIG_EVENTS)):
        middle = f"evt_{user:016x}{count // 2:016x}"
        requests = [("GET", "/events?limit=10", token, ""),
                    ("GET", f"/events?limit=10&starting_after={middle}", token, ""),
                    ("GET", "/events?limit=10&type=line.*", token, "")]
        bench.files[label] = write_requests(bench.work / f"{label}.requests", requests)
        SCENARIOS[label] = Scenario(label, f"GET /events (3 pages) with {count:,} events",
                                    "saypi", label)
        bench.check(server, label, 3)
    results: dict = {}
    interleave(bench, [("events_10", server, None), ("events_1m", server, None)],
               bench.settings.runs, results)
    return results


def token_of(bench: Bench, index: int) -> tuple[str, int]:
    """A seeded reader's token and user id."""
    user_id, token = bench.seeded.readers[index]
    return token, user_id


def spread_posts(bench: Bench) -> None:
    """Scenario 4 with the writers taken in turn: the main file sends each writer's
    conversations one after the other, so up to ten requests of one user run at once
    and wait for each other's lock; here consecutive requests are different users'."""
    by_user: dict[str, list[str]] = {}
    for token, cid in bench.seeded.write_conversations:
        by_user.setdefault(token, []).append(cid)
    turns = [(token, cids[i]) for i in range(max(map(len, by_user.values())))
             for token, cids in by_user.items() if i < len(cids)]
    requests = [("POST", f"/conversations/{cid}/lines", token, body)
                for (token, cid), (_, _, _, body) in zip(
                    itertools.islice(itertools.cycle(turns), 5000),
                    itertools.cycle(read_requests(bench.files["post_line"])), strict=False)]
    bench.files["post_line_spread"] = write_requests(bench.work / "spread.requests", requests)
    SCENARIOS["post_line_spread"] = Scenario(
        "post_line_spread", "4. POST /conversations/{id}/lines, writers in turn", "saypi",
        "post_line_spread", (201,))


def events(env: Mapping[str, str]) -> int:
    settings = BenchSettings.from_env(env)
    ref = baseline_ref(env)

    def work(bench: Bench) -> int:
        spread_posts(bench)
        trees = {"before": extract(ref, bench.work / "baseline"), "after": ROOT}
        servers = {label: start_tree(bench, label, tree) for label, tree in trees.items()}
        for server in servers.values():
            for key in WRITES:
                bench.check(server, key)
        bench.say(f"writes, interleaved: baseline {ref} and this tree")
        plan = []
        for key in WRITES:
            for label in ("before", "after"):
                SCENARIOS[f"{key}:{label}"] = SCENARIOS[key]
                plan.append((f"{key}:{label}", servers[label], None))
        results: dict = {}
        interleave(bench, plan, settings.runs, results)
        bench.stop(servers["before"])
        bench.say("GET /events with 10 and 1,000,000 events")
        reads = event_reads(bench, servers["after"])
        bench.stop(servers["after"])
        bench.say("round trips per write request")
        trips = count_round_trips(bench, trees)
        return publish("events", {"baseline": ref, "writes": results, "reads": reads,
                                  "round_trips": trips, "settings": settings.as_dict(),
                                  "cpus": os.cpu_count()},
                       render(ref, results, reads, trips))

    return with_bench(env, settings, work)


def render(ref: str, writes: dict, reads: dict, trips: dict) -> str:
    lines = ["# Events: the cost of the event log", "",
             f"Baseline: `{ref}` (before the event log). CPU is microseconds per request "
             "(app = the SayPI workers, postgres = the backends serving them), the median of "
             "interleaved runs; the machine's other load shows in `other CPU`.", "",
             "| scenario | tree | req/s | p99 ms | app CPU us | postgres CPU us | total | "
             "round trips |", "|---|---|---|---|---|---|---|---|"]
    for key in WRITES:
        totals = {}
        for label in ("before", "after"):
            row = writes[f"{key}:{label}"]
            cpu = row["cpu_us_per_request"]
            totals[label] = (cpu["app"] or 0) + (cpu["postgres"] or 0)
            lines.append(f"| {SCENARIOS[key].title} | {label} | {row['rps']} | {row['p99_ms']} "
                         f"| {cpu['app']} | {cpu['postgres']} | {totals[label]:.1f} | "
                         f"{trips.get(key, {}).get(label, '')} |")
        if totals["before"]:
            lines.append(f"| | change | | | | | "
                         f"{100 * (totals['after'] / totals['before'] - 1):+.1f} % | |")
    lines += ["", "| GET /events | req/s | p50 ms | p99 ms | app CPU us | postgres CPU us |",
              "|---|---|---|---|---|---|"]
    for row in reads.values():
        cpu = row["cpu_us_per_request"]
        lines.append(f"| {row['title']} | {row['rps']} | {row['p50_ms']} | {row['p99_ms']} | "
                     f"{cpu['app']} | {cpu['postgres']} |")
    return "\n".join(lines) + "\n"

