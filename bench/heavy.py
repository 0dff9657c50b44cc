"""`python -m bench heavy`: one user at and beyond the user rate limit reading 1000-line
conversations of long random lines (more distinct renders than the render cache holds),
production limits on: the share of the machine's CPU the workers spend on that user, renders
charged to the limit (default) or not (RATE_LIMIT_RENDERS_PER_ADMISSION=0); then the cached
GET rows on both servers, to show what the charge costs a request that renders nothing new."""

from __future__ import annotations

import os
import random
import string
import time
from datetime import UTC, datetime

import psycopg

from app.domain import ids
from app.http.tokens import TokenSigner
from bench import report
from bench.scenarios import SCENARIOS
from bench.seed import POSITIVE_63
from bench.servers import CpuSnapshot
from bench.session import Bench, publish, summarize, with_bench
from bench.settings import UNBOUNDED_LIMITS, BenchSettings
from bench.wrk import run_wrk, write_requests

CONVERSATIONS = 5      # of LINES lines each: 5,000 distinct renders, over RENDER_CACHE_SIZE
LINES = 1000
CLIENTS = 4            # keep-alive connections, all with the user's token
PRODUCTION_LIMITS = {"RATE_LIMIT_USER_PER_MINUTE": "600", "RATE_LIMIT_USER_BURST": "60",
                     "RATE_LIMIT_IP_PER_MINUTE": "120", "RATE_LIMIT_IP_BURST": "30"}
SERVERS = (("charged", {}), ("uncharged", {"RATE_LIMIT_RENDERS_PER_ADMISSION": "0"}))
LOADS = (("at the limit (10 req/s)", 10.0), ("4x the limit (40 req/s)", 40.0),
         ("unpaced (4 clients as fast as answered)", None))
QUIET_SECONDS = 10  # between runs: the user's burst (6 s) and any debt replenish
LIMIT_PER_SECOND = 10.0


TEXTS = {"ascii": string.ascii_lowercase, "accented": string.ascii_lowercase + "éüñø"}


def long_text(rng: random.Random, letters: str = string.ascii_lowercase) -> str:
    """900-1000 characters of random words: a line no other line renders like."""
    words, size, target = [], 0, rng.randint(900, 1000)
    while size < target:
        word = "".join(rng.choice(letters) for _ in range(rng.randint(2, 12)))
        words.append(word)
        size += len(word) + 1
    return " ".join(words)[:target]


def seed_heavy_user(dsn: str, secret: str, letters: str, seed: int) -> tuple[str, list[str]]:
    """One user owning CONVERSATIONS conversations of LINES long random lines: (token, ids)."""
    rng = random.Random(seed)
    uid = rng.getrandbits(63) or 1
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute("INSERT INTO users (id, name, conversation_count) VALUES (%s, %s, %s)",
                     (uid, "heavy bench user", CONVERSATIONS))
        public = []
        for c in range(CONVERSATIONS):
            rid = rng.getrandbits(63) & POSITIVE_63 or 1
            cid = conn.execute(
                "INSERT INTO conversations (rid, user_id, heading, line_count) "
                "VALUES (%s, %s, %s, %s) RETURNING id",
                (rid, uid, f"Heavy conversation {c}", LINES)).fetchone()[0]
            texts = [long_text(rng, letters) for _ in range(LINES)]
            conn.execute(
                "INSERT INTO lines (rid, conversation_id, mood_id, animal, think, text, "
                "created_at) "
                "SELECT greatest(1, hashtextextended('heavy:' || %(cid)s || ':' || i, 7) "
                "                   & %(mask)s), %(cid)s, 1 + i %% 8, 'default', i %% 3 = 0, "
                "       (%(texts)s::text[])[i], now() + make_interval(secs => i) "
                "FROM generate_series(1, %(n)s) i ORDER BY i",
                {"cid": cid, "mask": POSITIVE_63, "texts": texts, "n": LINES})
            public.append(ids.encode(ids.CONVERSATION, rid))
        conn.execute("ANALYZE")
    return TokenSigner((secret,)).sign(uid), public


def measure(bench: Bench, server, path, seconds: int, rate: float | None) -> dict:
    """One wrk run of CLIENTS connections: requests, statuses and the CPU it cost."""
    roots = bench.cpu_roots(server)
    before = CpuSnapshot(roots)
    result = run_wrk(bench.wrk, server.url, path, seconds, CLIENTS, 2, rate)
    cpu = CpuSnapshot(roots).since(before)
    app = cpu.get("app_user", 0.0) + cpu.get("app_system", 0.0)
    cpus = os.cpu_count() or 1
    refused = result.errors.get("status", 0)
    return {"seconds": round(result.seconds, 2), "requests": result.requests,
            "ok": result.requests - refused, "refused": refused,
            "ok_per_s": round((result.requests - refused) / result.seconds, 2),
            "refused_per_s": round(refused / result.seconds, 1),
            "app_cpu_seconds": round(app, 3),
            "app_cores": round(app / result.seconds, 3),
            "cpu_share_pct": round(100 * app / (result.seconds * cpus), 1),
            "postgres_cores": round((cpu.get("postgres_user", 0.0)
                                     + cpu.get("postgres_system", 0.0)) / result.seconds, 3),
            "p50_ms": result.latency_ms["p50"], "p99_ms": result.latency_ms["p99"],
            "other_cpu_seconds": round(cpu.get("other", 0.0), 2)}


def demand(rows: dict, kind: str, cpus: int) -> dict:
    """The user's CPU share at the limit from CPU per request, which a busy machine distorts
    less than wall-clock shares: a read's CPU from the uncharged run at the limit, a
    refusal's from the charged unpaced run, the reads the limit lets through from the
    charged run at the limit; 10 requests a second offered."""
    def row(name, load):
        return rows[f"{name}, {kind} lines: {load}"]

    at_limit, unpaced = LOADS[0][0], LOADS[2][0]
    free = row("uncharged", at_limit)
    read = free["app_cpu_seconds"] / max(1, free["ok"])  # refusals there: a few at most
    hammer = row("charged", unpaced)
    refusal = max(0.0, hammer["app_cpu_seconds"] - hammer["ok"] * read) / max(1, hammer["refused"])
    allowed = min(LIMIT_PER_SECOND, row("charged", at_limit)["ok_per_s"])
    charged = allowed * read + (LIMIT_PER_SECOND - allowed) * refusal
    return {"cpu_ms_per_read": round(1000 * read, 1),
            "cpu_ms_per_refusal": round(1000 * refusal, 3),
            "charged_reads_per_s": allowed,
            "uncharged_share_pct": round(100 * LIMIT_PER_SECOND * read / cpus, 1),
            "charged_share_pct": round(100 * charged / cpus, 1)}


def heavy(env) -> int:
    settings = BenchSettings.from_env(env)

    def work(bench: Bench) -> int:
        paths = {}
        for number, (kind, letters) in enumerate(TEXTS.items()):
            token, conversations = seed_heavy_user(bench.db.dsn, bench.secret, letters,
                                                   424242 + number)
            paths[kind] = write_requests(bench.work / f"heavy-{kind}.requests",
                                         [("GET", f"/conversations/{cid}", token, "")
                                          for cid in conversations])
        seconds = 20 if settings.quick else 30  # long enough for the burst to matter little
        rows: dict[str, dict] = {}
        overhead: dict[str, dict] = {}
        for name, extra in SERVERS:
            server = bench.start("saypi", extra={**PRODUCTION_LIMITS, **extra})
            for kind, path in paths.items():
                run_wrk(bench.wrk, server.url, path, 2, CLIENTS, 2, 10.0)  # warm-up
                for title, rate in LOADS:
                    time.sleep(QUIET_SECONDS)
                    row = measure(bench, server, path, seconds, rate)
                    rows[f"{name}, {kind} lines: {title}"] = row
                    bench.say(f"  {name:<9} {kind:<8} {title:<40} {row['ok_per_s']:6.2f} "
                              f"200/s {row['refused_per_s']:7.1f} 429/s  app "
                              f"{row['app_cores']:.2f} cores = {row['cpu_share_pct']:5.1f}%")
            bench.stop(server)
        bench.say("overhead on cached reads: the GET rows, unbounded limits, charge on and off")
        servers = {name: bench.start("saypi", extra={**UNBOUNDED_LIMITS, **extra})
                   for name, extra in SERVERS}
        plan = [(f"{key} {name}", server, key) for key in ("get", "get_cap")
                for name, server in servers.items()]
        for _label, server, key in plan:
            bench.measure(server, SCENARIOS[key].file, settings.warmup_seconds)
        collected: dict[str, list] = {label: [] for label, _, _ in plan}
        for _ in range(settings.runs):
            for label, server, key in plan:
                collected[label].append(bench.measure(server, SCENARIOS[key].file,
                                                      settings.seconds))
        for label, runs in collected.items():
            summary = summarize(runs, os.cpu_count() or 1)
            overhead[label] = {"rps": summary["rps"], "p99_ms": summary["p99_ms"],
                               "app_cpu_us_per_request": summary["cpu_us_per_request"]["app"],
                               "errors": summary["errors"]}
            bench.say(f"  {label:<20} {summary['rps']:8.1f} req/s  app CPU "
                      f"{summary['cpu_us_per_request']['app']} us/req")
        for server in servers.values():
            bench.stop(server)
        result = {"generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                  "quick": settings.quick, "cpus": os.cpu_count(), "clients": CLIENTS,
                  "conversations": CONVERSATIONS, "lines": LINES, "rows": rows,
                  "overhead": overhead, "limits": PRODUCTION_LIMITS,
                  "demand": {kind: demand(rows, kind, os.cpu_count() or 1) for kind in TEXTS},
                  "loadavg_at_end": os.getloadavg()}
        return publish("heavy", result, "\n".join(report.heavy_markdown(result)) + "\n")

    return with_bench(env, settings, work)
