"""PostgreSQL for the tests: the machine's (an admin DSN) or an embedded one, and databases
cloned from one migrated template, so each SayPI gets a fresh database in milliseconds.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import psycopg


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
        from app.store.db import migrate

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


def open_postgres(admin_dsn: str | None, directory: Path) -> Postgres:
    """The machine's PostgreSQL at `admin_dsn`, else an embedded one in `directory` (the
    mechanism `make run` uses); its migrated template made."""
    if admin_dsn:
        pg = Postgres(admin_dsn)
    else:
        from app.store.embedded_pg import start_embedded

        embedded = start_embedded(directory, logging.getLogger("test"))
        pg = Postgres(embedded.dsn, stop=embedded.stop)
    pg.make_template()
    return pg
