"""Test fixtures: a real PostgreSQL, migrated template databases, SayPI started through run().

With SAYPI_TEST_DATABASE_URL unset (CI), the suite starts its own embedded
PostgreSQL, the same mechanism `make run` uses. Each server gets its own
database cloned from a migrated template, so tests run in any order.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

ROOT = Path(__file__).resolve().parent.parent
SECRET = "test-secret-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def dsn_with_db(dsn: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(dsn, dbname=dbname)


class Postgres:
    """An admin connection string and helpers to make databases from a template."""

    def __init__(self, admin_dsn: str, stop=None):
        self.admin_dsn = admin_dsn
        self._stop = stop
        self.template = f"saypi_tpl_{uuid.uuid4().hex[:8]}"
        self.created: list[str] = []

    def execute(self, sql: str, dbname: str | None = None) -> None:
        dsn = dsn_with_db(self.admin_dsn, dbname) if dbname else self.admin_dsn
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql)

    def make_template(self) -> None:
        from app.platform.db import migrate

        self.execute(f'CREATE DATABASE "{self.template}"')
        migrate(dsn_with_db(self.admin_dsn, self.template), logging.getLogger("test"))

    def new_database(self, migrated: bool = True) -> str:
        name = f"saypi_t_{uuid.uuid4().hex[:10]}"
        template = f' TEMPLATE "{self.template}"' if migrated else ""
        self.execute(f'CREATE DATABASE "{name}"{template}')
        self.created.append(name)
        return dsn_with_db(self.admin_dsn, name)

    def close(self) -> None:
        for name in [*self.created, self.template]:
            try:
                self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except psycopg.Error:
                pass
        if self._stop:
            self._stop()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory) -> Iterator[Postgres]:
    admin = os.environ.get("SAYPI_TEST_DATABASE_URL")
    if admin:
        pg = Postgres(admin)
    else:
        from app.platform.embedded_pg import start_embedded

        embedded = start_embedded(tmp_path_factory.mktemp("pg"), logging.getLogger("test"))
        pg = Postgres(embedded.dsn, stop=embedded.stop)
    pg.make_template()
    yield pg
    pg.close()


class Server:
    """A SayPI started as production starts it: `python run.py serve` (which calls run())."""

    def __init__(self, env: dict[str, str], log_path: Path, argv: list[str] | None = None):
        self.port = int(env["PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = env
        self._log = open(log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), *(argv or ["serve"])],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def wait_ready(self, timeout: float = 60.0) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"SayPI exited with {self.process.returncode}:\n{self.logs()}")
            try:
                if httpx.get(self.url + "/health/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"SayPI not ready after {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[str]:
        return self.logs().splitlines()

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self._log.close()
        return self.process.returncode


def server_env(database_url: str, tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "DATABASE_URL": database_url,
        "PORT": str(free_port()),
        "DATA_DIR": str(tmp_path / "data"),
        "USER_SECRETS": SECRET,
        "WEB_CONCURRENCY": "2",
        "THREADS": "4",
        "DB_POOL_MIN": "1",
        "DB_POOL_MAX": "4",
        "LOG_FORMAT": "json",
        "RATE_LIMIT_USER_PER_MINUTE": "0",
        "RATE_LIMIT_IP_PER_MINUTE": "0",
        "FAULT_INJECTION": "true",
        "GRACEFUL_TIMEOUT": "10",
        "HEALTH_CACHE_SECONDS": "0.2",
    }
    if os.environ.get("COWPATH"):
        env["COWPATH"] = os.environ["COWPATH"]
    env.update(overrides)
    return env


@pytest.fixture
def start_server(postgres, tmp_path) -> Iterator:
    """Start SayPI servers on fresh databases; all are stopped after the test."""
    servers: list[Server] = []

    def start(database_url: str | None = None, wait: bool = True, argv=None,
              **overrides: str) -> Server:
        url = database_url or postgres.new_database()
        env = server_env(url, tmp_path, **overrides)
        server = Server(env, tmp_path / f"server-{len(servers)}.log", argv)
        servers.append(server)
        return server.wait_ready() if wait else server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def shared_server(postgres, tmp_path_factory) -> Iterator[Server]:
    """One SayPI per test module; tests isolate themselves with their own users."""
    tmp = tmp_path_factory.mktemp("server")
    server = Server(server_env(postgres.new_database(), tmp), tmp / "server.log")
    server.wait_ready()
    yield server
    server.stop()


def eventually(predicate, seconds: float = 15.0, every: float = 0.1) -> bool:
    """Poll until predicate() is true (HTTP errors count as not yet) or time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except httpx.HTTPError:
            pass
        time.sleep(every)
    return False


def run_inline(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Call run() in this process (for paths that exit before serving)."""
    from run import run

    out = io.StringIO()
    code = run(["run.py", *argv], env, out)
    return code, out.getvalue()


def run_threads(target, arguments) -> None:
    """Call target(*args) for every args tuple of `arguments`, each on a thread, and wait."""
    threads = [threading.Thread(target=target, args=args) for args in arguments]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
