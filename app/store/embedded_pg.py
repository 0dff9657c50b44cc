"""An embedded PostgreSQL for development, so `make run` needs no database set up.

Uses the `pgserver` wheel, which bundles the PostgreSQL server binaries (and,
when run as root, runs them as an unprivileged system user, since PostgreSQL
refuses root). Data lives under DATA_DIR/postgres and survives restarts.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psycopg

DATABASE_NAME = "saypi"


class EmbeddedUnavailable(Exception):
    """No embedded PostgreSQL could be started; the message says what to do."""


class _Server(Protocol):
    def cleanup(self) -> None: ...


@dataclass
class EmbeddedPostgres:
    server: _Server  # pgserver's, an optional dependency
    dsn: str

    def stop(self) -> None:
        self.server.cleanup()


def start_embedded(data_dir: Path, logger: logging.Logger) -> EmbeddedPostgres:
    """Start (or join) the PostgreSQL whose data lives in data_dir/postgres."""
    try:
        with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError as exc:
        raise EmbeddedUnavailable(
            "DATABASE_URL is unset and the embedded PostgreSQL (the `pgserver` package, the "
            "`embedded` extra) is not installed: run `make run` (which installs it), "
            "`pip install '.[embedded]'`, or set DATABASE_URL to a PostgreSQL you run."
        ) from exc
    pgdata = (data_dir / "postgres").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    try:
        server = pgserver.get_server(pgdata, cleanup_mode="stop")
    except Exception as exc:
        raise EmbeddedUnavailable(
            f"the embedded PostgreSQL in {pgdata} did not start ({type(exc).__name__}: {exc}); "
            f"see {pgdata / 'log'}, or set DATABASE_URL to a PostgreSQL you run."
        ) from exc
    admin_dsn = server.get_uri()
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                              (DATABASE_NAME,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
            logger.info("created database %s in the embedded PostgreSQL", DATABASE_NAME)
    return EmbeddedPostgres(server, server.get_uri(DATABASE_NAME))
