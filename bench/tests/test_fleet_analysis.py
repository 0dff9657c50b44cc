"""The fleet's phase table, targets and report on made-up attempts (no run, no I/O)."""

from __future__ import annotations

from bench.fleet.analysis import Phase, summarize, targets
from bench.fleet.load import Attempt, LoadGenerator, Write
from bench.fleet.report import markdown


def test_the_phase_table_counts_what_happened():
    phase = Phase("crash", started=100.0, ended=110.0)
    attempts = [Attempt("crash", "get", 101.0, 0.002, 200),
                Attempt("crash", "get", 102.0, 0.010, 503, retry_after=True),
                Attempt("crash", "write", 103.0, 0.004, None, "RemoteDisconnected"),
                Attempt("crash", "write", 103.5, 0.006, 201),
                Attempt("other", "get", 104.0, 9.0, 500)]
    acked = Write("crash", "k1", "cv_1", attempts=2, status=201, line_id="ln_0000000000000001")
    lost = Write("crash", "k2", "cv_1", attempts=1, status=201, line_id="ln_0000000000000002")
    twice = Write("crash", "k3", "cv_1", attempts=3, status=503)
    load = LoadGenerator(port=1, seeded=None, clients=1, rate=1.0, write_give_up_seconds=1.0)
    load.attempts, load.writes = attempts, [acked, lost, twice]  # never started
    rows = {acked.marker: 1, twice.marker: 2}
    proxy_log = [{"time": 101.5, "server": "saypi1", "status": 200, "term": "----",
                  "retries": 1, "redispatched": True, "request": "GET /x HTTP/1.1"}]
    (row,) = summarize([phase], load, rows, {acked.line_id}, proxy_log, 3.0)
    row["instance_threads"] = 8
    assert row["requests"] == 4 and row["ok"] == 2
    assert row["statuses"] == {"503": 1}
    assert row["connection_errors"] == {"RemoteDisconnected": 1}
    assert row["max_ms"] == 10.0
    assert row["writes_acknowledged"] == 2 and row["acknowledged_lost"] == 1
    assert row["keys_with_several_rows"] == 1 and row["retried_writes_not_one_row"] == 0
    assert row["haproxy_retried"] == 1 and row["haproxy_redispatched"] == 1
    verdicts = {t["target"]: t["met"] for t in targets([row])}
    assert verdicts["nothing acknowledged lost"] is False
    assert verdicts["nothing duplicated"] is False
    assert verdicts["only requests in flight on the killed instance fail"] is True
    text = markdown({"generated_at": "now", "settings": {
        "instances": 3, "workers": 2, "threads": 4, "clients": 8, "rate": 120.0},
        "haproxy_version": "2.6", "database": "db", "elapsed_seconds": 1.0,
        "phases": [row], "targets": targets([row])})
    assert "| crash | 10 | 4 | 2 | 503: 1 | RemoteDisconnected: 1 |" in text
    assert "| 2 | 1 |" in text  # writes retried by clients, HAProxy retried
