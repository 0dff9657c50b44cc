"""PostgreSQL for the tests: the machine's (an admin DSN) or an embedded one, and databases
cloned from one migrated template, so each SayPI gets a fresh database in milliseconds.
"""

from __future__ import annotations

import logging
import uuid

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
