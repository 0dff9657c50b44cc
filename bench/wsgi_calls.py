"""A WSGI app called directly, without an HTTP server: the requests of a request file as
environs, and the microseconds per call on one thread."""

from __future__ import annotations

import io
import time
from collections import Counter
from pathlib import Path

from bench.scenarios import read_requests


def wsgi_environs(path: Path, count: int) -> list[tuple[dict, bytes]]:
    """WSGI environs for the first `count` requests of a request file (built once)."""
    from werkzeug.test import EnvironBuilder

    out = []
    for method, target, token, body in read_requests(path)[:count]:
        route, _, query = target.partition("?")
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        builder = EnvironBuilder(path=route, query_string=query, method=method,
                                 headers=headers, data=body.encode() if body else None,
                                 content_type="application/json" if body else None)
        environ = builder.get_environ()
        builder.close()
        environ["REMOTE_ADDR"] = "127.0.0.1"
        out.append((environ, body.encode()))
    return out


def call(app, environ: dict, body: bytes) -> str:
    env = dict(environ)
    env["wsgi.input"] = io.BytesIO(body)
    status = []

    def start_response(code, headers, exc_info=None):
        status.append(code)

    result = app(env, start_response)
    try:
        for _ in result:
            pass
    finally:
        if hasattr(result, "close"):
            result.close()
    return status[0]


def time_calls(app, environs: list[tuple[dict, bytes]], count: int) -> dict:
    """Wall and process-CPU microseconds per call, single thread, after a warm-up."""
    for i in range(min(200, count)):
        call(app, *environs[i % len(environs)])
    statuses: Counter = Counter()
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(count):
        statuses[call(app, *environs[i % len(environs)])] += 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"calls": count, "wall_us": round(1e6 * wall / count, 1),
            "cpu_us": round(1e6 * cpu / count, 1), "statuses": dict(statuses)}
