"""Logging in real processes: every library logger goes through the JSON handler (in a
subprocess, so this process's root logger is left alone), and SayPI's log while its
PostgreSQL is down stays JSON and bounded; a token sent as the request id never reaches the
logs.
"""

from __future__ import annotations

import collections
import json
import re
import subprocess
import sys
import textwrap
import threading
import time

import httpx

from harness import ROOT
from harness.pgcontrol import RestartablePostgres
from tests.conftest import eventually
from tests.unit.test_logs import LEAK, TOKEN, _lines

LIBRARY_SCRIPT = textwrap.dedent("""
    import logging, sys, warnings
    from app.ops.logs import new_logger
    new_logger(sys.stdout, "INFO", "json", secrets=["configured-secret"])
    token = sys.argv[1]
    logging.getLogger("psycopg.pool").warning("error connecting in %r: %s", "saypi",
        "connection failed:\\n\\tIs the server running? Bearer " + token)
    logging.getLogger("psycopg.pool").info("connection given by 'saypi'")  # below WARNING
    logging.getLogger("psycopg").warning("query cancellation failed: %s", token)
    logging.getLogger("werkzeug").error("Authorization Bearer %s", token)
    logging.getLogger("some.library").warning("configured-secret in %s", token)
    logging.warning("root: %s", token)
    logging.getLogger("saypi.db").warning("db: %s", token)
    try:
        raise RuntimeError("boom " + token)
    except RuntimeError:
        logging.getLogger("psycopg.pool").exception("worker failed")
    print("done", file=sys.stderr)
""")


def test_every_logger_of_the_process_goes_through_the_json_handler():
    """psycopg, psycopg.pool, werkzeug and the root logger: one JSON line each,
    redacted, nothing on stderr from Python's last-resort handler."""
    result = subprocess.run([sys.executable, "-c", LIBRARY_SCRIPT, TOKEN], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=True)
    assert result.stderr == "done\n"
    lines = _lines(result.stdout)
    assert [(line["logger"], line["level"]) for line in lines] == [
        ("psycopg.pool", "WARNING"), ("psycopg", "WARNING"), ("werkzeug", "ERROR"),
        ("some.library", "WARNING"), ("root", "WARNING"), ("saypi.db", "WARNING"),
        ("psycopg.pool", "ERROR")]
    assert "\n\tIs the server running?" in lines[0]["message"]
    assert "RuntimeError: boom [REDACTED]" in lines[-1]["exc_info"]
    assert LEAK not in result.stdout and "configured-secret" not in result.stdout


# --- end to end: an outage -----------------------------------------------------------------
def test_database_outage_log_is_json_and_bounded(start_server, tmp_path):
    """PostgreSQL down, ~200 requests refused with 503 over ~3 s: every line SayPI
    writes is one JSON object and the per-request warning is rate-limited, with
    summaries carrying the count."""
    pg = RestartablePostgres(tmp_path / "own-pg")
    try:
        server = start_server(pg.dsn, LOG_FORMAT="json", DB_POOL_TIMEOUT="0.1",
                              DB_CONNECT_TIMEOUT="1", WEB_CONCURRENCY="2", THREADS="8")
        pg.stop()
        statuses: collections.Counter = collections.Counter()
        started = time.monotonic()
        deadline = started + 3.0

        def traffic() -> None:
            with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)
                              ) as client:
                while time.monotonic() < deadline and statuses[503] < 300:
                    try:
                        response = client.get(server.url + "/debug/db-sleep?seconds=0")
                        statuses[response.status_code] += 1
                    except httpx.HTTPError:
                        statuses[-1] += 1
                    time.sleep(0.02)

        clients = [threading.Thread(target=traffic) for _ in range(8)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(30)
        outage = time.monotonic() - started
        pg.start()
        assert eventually(lambda: httpx.get(server.url + "/health/ready",
                                            timeout=10).status_code == 200, seconds=20)
        time.sleep(1.5)  # the workers' periodic flush writes the last summaries
    finally:
        pg.close()
    server.stop()
    assert statuses[503] >= 100, statuses
    lines = server.log_path.read_text(errors="replace").splitlines()
    records = []
    not_json = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            not_json.append(line)
        else:
            assert isinstance(records[-1], dict), line
    # One plain line is app/ops/serve.py's readiness banner, printed to stdout by
    # gunicorn's when_ready hook (not a log record; reported, not SayPI's logs).
    assert not_json == []
    unavailable = [r for r in records if r["message"].startswith("database unavailable")]
    summaries = [r for r in unavailable if "repeated" in r]
    assert summaries and all(r["repeated"] >= 1 for r in summaries)
    logged = len(unavailable) - len(summaries) + sum(r["repeated"] for r in summaries)
    assert logged == statuses[503], (logged, statuses)  # every refusal accounted for
    workers = 2
    seconds = outage + 2  # windows may straddle the start and the end
    assert len(unavailable) <= 10 * seconds * workers, len(unavailable)
    pool_errors = [r for r in records if r["logger"] == "psycopg.pool"]
    assert all("\n" not in line for line in lines)
    assert len(pool_errors) <= 10 * seconds * workers * 3, len(pool_errors)


# --- end to end: a token sent as the request id --------------------------------------------
def test_a_token_sent_as_the_request_id_never_reaches_the_logs(start_server):
    """X-Request-ID carrying the bearer token (whole, inside a longer id, its MAC alone, or
    any token-shaped id) is replaced by a generated id, on the response and on every log
    line, the error records of a failing request included; other ids are still echoed."""
    server = start_server(LOG_FORMAT="json")
    token = httpx.post(server.url + "/users", json={"name": "leaky"}, timeout=10).json()["token"]
    other = httpx.post(server.url + "/users", json={"name": "other"}, timeout=10).json()["token"]
    mac = token.split(".", 1)[1]
    bearer = {"Authorization": f"Bearer {token}"}
    sent = {token: bearer, f"req-{token}-1": bearer, mac: bearer, f"{mac}.2": bearer,
            token.upper(): bearer, other: bearer, f"id-{token}": {}}
    answered, listed = {}, {}
    for request_id, headers in sent.items():
        response = httpx.get(server.url + "/debug/fail", timeout=10,
                             headers={**headers, "X-Request-ID": request_id})
        assert response.status_code == 500, response.text
        answered[request_id] = response.headers["x-request-id"]
        response = httpx.get(server.url + "/moods", timeout=10,
                             headers={**headers, "X-Request-ID": request_id})
        assert response.status_code == (200 if headers else 401), response.text
        listed[request_id] = response.headers["x-request-id"]
    mine = httpx.get(server.url + "/moods", headers={**bearer, "X-Request-ID": "trace-7.a_b"},
                     timeout=10)
    assert mine.headers["x-request-id"] == "trace-7.a_b"

    def failures(lines: list[str]) -> list[dict]:
        return [json.loads(line) for line in lines
                if line.startswith("{") and '"unhandled exception"' in line]

    assert eventually(lambda: len(failures(server.log_lines())) >= len(sent), seconds=30), \
        f"{len(failures(server.log_lines()))} error records of {len(sent)}"
    assert server.stop() == 0
    logs = server.log_path.read_text(errors="replace")
    for secret in (token, mac, other.split(".", 1)[1], mac[:10], other.split(".", 1)[1][:10]):
        assert secret not in logs and secret.upper() not in logs, secret
    for ids in (answered, listed):
        assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in ids.values()), ids
    # The error records are under the id the client was given.
    assert {record["request_id"] for record in failures(logs.splitlines())} == \
        set(answered.values())
