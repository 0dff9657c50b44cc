"""A private embedded PostgreSQL that a test may stop, start and restart."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from app.store.embedded_pg import start_embedded


class RestartablePostgres:
    """The embedded PostgreSQL of `directory` (app/store/embedded_pg.py), with pg_ctl's
    stop, start and restart; the tests' and the benchmark's own server."""

    def __init__(self, directory: Path, logger: logging.Logger | None = None):
        self.embedded = start_embedded(directory, logger or logging.getLogger("test"))
        self.dsn = self.embedded.dsn
        self.pgdata = directory.resolve() / "postgres"
        self.socket_dir = parse_qs(urlparse(self.dsn).query)["host"][0]
        self._user = "pgserver" if os.geteuid() == 0 else None

    def _pg_ctl(self, *args: str) -> None:
        import pgserver

        pgserver.pg_ctl(list(args), pgdata=self.pgdata, user=self._user, timeout=60)

    def stop(self) -> None:
        self._pg_ctl("-w", "-m", "fast", "stop")

    def start(self) -> None:
        self._pg_ctl("-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}",
                     "-l", str(self.pgdata / "log"), "start")

    def restart(self) -> None:
        self._pg_ctl("-w", "-m", "fast", "-o", '-h ""', "-o", f"-k {self.socket_dir}",
                     "-l", str(self.pgdata / "log"), "restart")

    def close(self) -> None:
        """Stop the server, whichever postmaster runs now: pgserver stops only the one it
        started, and after a restart() or start() a new one serves the data directory."""
        self.embedded.stop()
        if (self.pgdata / "postmaster.pid").exists():
            self._pg_ctl("-w", "-m", "fast", "stop")
