"""`python -m bench overload`: fresh requests while slow clients or row locks hold the server.

- slow bodies: SayPI as configured (WEB_CONCURRENCY x THREADS), 0 and then
  OVERLOAD_SLOW_BODIES connections that each send a complete head with
  `Content-Length: 1000` and then one body byte a second; fresh `GET /animals`,
  each on a new connection, one after another: p50/p99/max and failures; then
  how many slow connections SayPI closed once BODY_TIMEOUT had passed.
- row locks: OVERLOAD_PATCHES `PATCH /conversations/{id}` blocked on a row lock
  held by the benchmark, for a pool of 4 and of 8 connections per worker
  (DB_POOL_TIMEOUT 3 s): fresh GETs' statuses and latencies, 503s against
  DB_POOL_TIMEOUT. Writes bench-results/overload.md and overload.json.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime

import httpx
import psycopg

from bench.session import Bench, machine_info, publish, with_bench
from bench.settings import BenchSettings

SLOW_HEAD = (b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             b"Content-Length: 1000\r\n\r\n{")
BODY_TIMEOUT = 10.0
DB_POOL_TIMEOUT = 3.0


def overload(env: Mapping[str, str]) -> int:
    settings = BenchSettings.from_env(env)
    slow_count = int(env.get("OVERLOAD_SLOW_BODIES", "200"))
    patches = int(env.get("OVERLOAD_PATCHES", "24"))
    fresh = int(env.get("OVERLOAD_FRESH", "100" if settings.quick else "400"))

    def measure(bench: Bench) -> int:
        data: dict = {"generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                      "quick": settings.quick, "machine": machine_info(bench)}
        data["slow_bodies"] = slow_bodies(bench, slow_count, fresh)
        data["row_locks"] = [row_locks(bench, pool_max, patches, max(20, fresh // 10))
                             for pool_max in (4, 8)]
        return publish("overload", data, overload_markdown(data))

    return with_bench(env, settings, measure)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else 0.0


def latency_row(latencies: list[float]) -> dict:
    return {"n": len(latencies), "p50_ms": round(statistics.median(latencies), 1),
            "p99_ms": round(percentile(latencies, 0.99), 1), "max_ms": round(max(latencies), 1)}


def fresh_gets(port: int, path: str, token: str, count: int, timeout: float = 10.0
               ) -> tuple[list[float], int]:
    """Latencies (ms) of `count` GETs, each on a new connection, and how many failed."""
    head = (f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Connection: close\r\n\r\n").encode()
    latencies, failed = [], 0
    for _ in range(count):
        started = time.perf_counter()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
                sock.sendall(head)
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
            ok = answer.startswith(b"HTTP/1.1 200")
        except OSError:
            ok = False
        latencies.append((time.perf_counter() - started) * 1000)
        failed += not ok
    return latencies, failed


def slow_bodies(bench: Bench, count: int, fresh: int) -> dict:
    saypi = bench.start("saypi", extra={"BODY_TIMEOUT": f"{BODY_TIMEOUT:g}"})
    try:
        token = httpx.post(saypi.url + "/users", json={"name": "fresh"}, timeout=10
                           ).json()["token"]
        config = bench.effective_config({"BODY_TIMEOUT": f"{BODY_TIMEOUT:g}"})
        row: dict = {"workers": config.web_concurrency, "threads": config.threads,
                     "body_timeout_s": BODY_TIMEOUT, "held": count}
        fresh_gets(saypi.port, "/animals", token, 20)  # warm-up
        idle, idle_failed = fresh_gets(saypi.port, "/animals", token, fresh)
        row["nothing_held"] = {**latency_row(idle), "failed": idle_failed}
        bench.say(f"slow bodies: {count} connections, one body byte a second")
        socks = [socket.create_connection(("127.0.0.1", saypi.port)) for _ in range(count)]
        opened = time.monotonic()
        stop = threading.Event()
        closed: list[float] = []

        def trickle() -> None:
            for sock in socks:
                sock.sendall(SLOW_HEAD)
            live = list(socks)
            while live and not stop.wait(1.0):
                for sock in list(live):
                    try:
                        sock.sendall(b" ")
                        sock.setblocking(False)
                        try:
                            gone = sock.recv(1) == b""
                        except BlockingIOError:
                            gone = False
                        finally:
                            sock.setblocking(True)
                        if gone:
                            raise ConnectionResetError
                    except OSError:
                        live.remove(sock)
                        closed.append(time.monotonic() - opened)

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        try:
            time.sleep(1.5)
            held, held_failed = fresh_gets(saypi.port, "/animals", token, fresh)
            row["slow_bodies_held"] = {**latency_row(held), "failed": held_failed,
                                       "held_while_measuring": count - len(closed)}
            deadline = opened + BODY_TIMEOUT + 5
            while len(closed) < count and time.monotonic() < deadline:
                time.sleep(0.2)
            row["closed_by_server"] = len(closed)
            row["closed_after_s"] = ([round(min(closed), 1), round(max(closed), 1)]
                                     if closed else None)
        finally:
            stop.set()
            thread.join()
            for sock in socks:
                sock.close()
        return row
    finally:
        bench.stop(saypi)


def row_locks(bench: Bench, pool_max: int, patches: int, fresh: int) -> dict:
    extra = {"DB_POOL_MAX": str(pool_max), "DB_POOL_TIMEOUT": f"{DB_POOL_TIMEOUT:g}",
             "DB_STATEMENT_TIMEOUT": "0"}  # PATCHes wait until the lock is released
    saypi = bench.start("saypi", extra=extra)
    config = bench.effective_config(extra)
    row: dict = {"workers": config.web_concurrency, "threads": config.threads,
                 "db_pool_max": pool_max, "db_pool_timeout_s": DB_POOL_TIMEOUT,
                 "patches_blocked": patches}
    try:
        token = httpx.post(saypi.url + "/users", json={"name": "locked"}, timeout=10
                           ).json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        heading = f"locked-{time.monotonic_ns()}"
        cid = httpx.post(saypi.url + "/conversations", json={"heading": heading},
                         headers=auth, timeout=10).json()["id"]
        statuses: list[int] = []

        def patch(n: int) -> None:
            try:
                statuses.append(httpx.patch(f"{saypi.url}/conversations/{cid}", headers=auth,
                                            json={"heading": f"{heading}-{n}"},
                                            timeout=600).status_code)
            except httpx.HTTPError:
                statuses.append(-1)

        bench.say(f"row locks: {patches} PATCHes blocked, DB_POOL_MAX={pool_max}")
        answers: list[tuple[int, float, bool]] = []
        with psycopg.connect(bench.db.dsn) as lock:
            lock.execute("SELECT id FROM conversations WHERE heading = %s FOR UPDATE",
                         (heading,))
            threads = [threading.Thread(target=patch, args=(n,)) for n in range(patches)]
            for thread in threads:
                thread.start()
            time.sleep(1.0)
            with httpx.Client(base_url=saypi.url, headers=auth, timeout=30) as client:
                for i in range(fresh):
                    path = f"/conversations/{cid}" if i % 2 else "/animals"
                    started = time.perf_counter()
                    try:
                        response = client.get(path, headers={"Connection": "close"})
                        status = response.status_code
                        retry_after = "retry-after" in response.headers
                    except httpx.HTTPError:
                        status, retry_after = -1, False
                    answers.append((status, (time.perf_counter() - started) * 1000,
                                    retry_after))
            lock.rollback()
        for thread in threads:
            thread.join(600)
        by_status: dict[int, list[float]] = {}
        for status, ms, _ in answers:
            by_status.setdefault(status, []).append(ms)
        row["fresh"] = {str(status): latency_row(ms) for status, ms in sorted(by_status.items())}
        row["fresh_503_without_retry_after"] = sum(
            1 for status, _, retry in answers if status == 503 and not retry)
        row["patch_statuses"] = {str(s): statuses.count(s) for s in sorted(set(statuses))}
        return row
    finally:
        bench.stop(saypi)


def overload_markdown(data: dict) -> str:
    s = data["slow_bodies"]
    lines = ["# Overload: slow bodies and row locks", "",
             f"Generated {data['generated_at']}{' (quick)' if data['quick'] else ''}; "
             f"{data['machine'].get('cpus', '?')} CPUs, shared: timings are noisy.", "",
             f"## Fresh `GET /animals` (new connection each) with slow bodies held "
             f"({s['workers']} workers x {s['threads']} threads, BODY_TIMEOUT "
             f"{s['body_timeout_s']:g} s)", "",
             "| held | n | p50 ms | p99 ms | max ms | failed |", "|---|---|---|---|---|---|"]
    for key, label in (("nothing_held", "nothing"),
                       ("slow_bodies_held", f"{s['held']} slow bodies")):
        r = s[key]
        lines.append(f"| {label} | {r['n']} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} "
                     f"| {r['failed']} |")
    lines += ["", f"Slow connections closed by SayPI: {s['closed_by_server']} of {s['held']}"
              + (f", {s['closed_after_s'][0]}-{s['closed_after_s'][1]} s after they opened"
                 if s["closed_after_s"] else ""), "",
              f"## Fresh GETs while PATCHes wait on a row lock (DB_POOL_TIMEOUT "
              f"{DB_POOL_TIMEOUT:g} s)", "",
              "| pool per worker | PATCHes blocked | status | n | p50 ms | p99 ms | max ms |",
              "|---|---|---|---|---|---|---|"]
    for row in data["row_locks"]:
        for status, r in row["fresh"].items():
            lines.append(f"| {row['db_pool_max']} | {row['patches_blocked']} | {status} | "
                         f"{r['n']} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} |")
    missing = sum(row["fresh_503_without_retry_after"] for row in data["row_locks"])
    lines += ["", f"503s without Retry-After: {missing}. PATCH statuses: "
              + "; ".join(f"pool {row['db_pool_max']}: {row['patch_statuses']}"
                          for row in data["row_locks"]), ""]
    return "\n".join(lines)
