"""`python -m bench heavy`: one user at and beyond the user rate limit, reading 1000-line
conversations of long random lines (more distinct renders than a worker's render cache
holds, so nearly every line of every read is rendered again), with the production
limits on; the figure is the share of the machine's CPU the workers spend on that user,
with renders charged to the limit (the default) and without (RATE_LIMIT_RENDERS_PER_ADMISSION=0).
"""

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
from bench.main import Bench, publish, with_bench
from bench.seed import POSITIVE_63
from bench.servers import CpuSnapshot
from bench.settings import BenchSettings
from bench.wrk import run_wrk, write_requests

CONVERSATIONS = 5      # of LINES lines each: 5,000 distinct renders, over RENDER_CACHE_SIZE
LINES = 1000
CLIENTS = 4            # keep-alive connections, all with the user's token
PRODUCTION_LIMITS = {"RATE_LIMIT_USER_PER_MINUTE": "600", "RATE_LIMIT_USER_BURST": "60",
                     "RATE_LIMIT_IP_PER_MINUTE": "120", "RATE_LIMIT_IP_BURST": "30"}
SERVERS = (("charged", {}), ("uncharged", {"RATE_LIMIT_RENDERS_PER_ADMISSION": "0"}))
LOADS = (("at the limit (10 req/s)", 10.0), ("4x the limit (40 req/s)", 40.0),
         ("unpaced (4 clients as fast as answered)", None))
QUIET_SECONDS = 8  # between runs: the user's burst (6 s) and any debt replenish


def long_text(rng: random.Random) -> str:
    """900-1000 characters of random words: a line no other line renders like."""
    words, size, target = [], 0, rng.randint(900, 1000)
    while size < target:
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 12)))
        words.append(word)
        size += len(word) + 1
    return " ".join(words)[:target]


def seed_heavy_user(dsn: str, secret: str) -> tuple[str, list[str]]:
    """One user owning CONVERSATIONS conversations of LINES long random lines: (token, ids)."""
    rng = random.Random(424242)
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
            texts = [long_text(rng) for _ in range(LINES)]
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
            "ok_per_s": round((result.requests - refused) / result.seconds, 2),
            "refused_per_s": round(refused / result.seconds, 1),
            "app_cpu_seconds": round(app, 2),
            "app_cores": round(app / result.seconds, 3),
            "cpu_share_pct": round(100 * app / (result.seconds * cpus), 1),
            "postgres_cores": round((cpu.get("postgres_user", 0.0)
                                     + cpu.get("postgres_system", 0.0)) / result.seconds, 3),
            "p50_ms": result.latency_ms["p50"], "p99_ms": result.latency_ms["p99"],
            "other_cpu_seconds": round(cpu.get("other", 0.0), 2)}


def heavy(env) -> int:
    settings = BenchSettings.from_env(env)

    def work(bench: Bench) -> int:
        token, conversations = seed_heavy_user(bench.db.dsn, bench.secret)
        path = write_requests(bench.work / "heavy.requests",
                              [("GET", f"/conversations/{cid}", token, "")
                               for cid in conversations])
        seconds = max(settings.seconds, 5)
        rows: dict[str, dict] = {}
        for name, extra in SERVERS:
            server = bench.start("saypi", extra={**PRODUCTION_LIMITS, **extra})
            run_wrk(bench.wrk, server.url, path, 2, CLIENTS, 2, 10.0)  # warm-up, untimed
            for title, rate in LOADS:
                time.sleep(QUIET_SECONDS)
                row = measure(bench, server, path, seconds, rate)
                rows[f"{name}: {title}"] = row
                bench.say(f"  {name:<9} {title:<42} {row['ok_per_s']:6.2f} 200/s "
                          f"{row['refused_per_s']:7.1f} 429/s  app {row['app_cores']:.2f} "
                          f"cores = {row['cpu_share_pct']:5.1f}% of the machine")
            bench.stop(server)
        result = {"generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                  "quick": settings.quick, "cpus": os.cpu_count(), "clients": CLIENTS,
                  "conversations": CONVERSATIONS, "lines": LINES, "rows": rows,
                  "limits": PRODUCTION_LIMITS, "loadavg_at_end": os.getloadavg()}
        return publish("heavy", result, "\n".join(report.heavy_markdown(result)) + "\n")

    return with_bench(env, settings, work)
