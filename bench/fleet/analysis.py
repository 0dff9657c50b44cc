"""The fleet's figures per phase: requests, statuses, latencies, writes against the rows
PostgreSQL holds, HAProxy's own retries from its log, and the targets met or not."""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psycopg

from bench.fleet.load import Attempt, LoadGenerator, Write


@dataclass
class Phase:
    name: str
    started: float = 0.0  # time.time()
    ended: float = 0.0
    events: list[dict] = field(default_factory=list)
    database_back: float | None = None  # time.time() when pg_ctl restart returned


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
