"""SayPI's entry point: run(argv, env, stdout) -> exit status.

Only operating-system fundamentals come in (arguments, environment, output
stream); everything else is built from them here and passed down, so tests
run exactly what production runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO


def run(argv: Sequence[str], env: Mapping[str, str], stdout: IO[str]) -> int:
    from app.config import Config, ConfigError

    try:
        config = Config.from_env(env, list(argv[1:]), stdout=stdout)
    except ConfigError as exc:
        for problem in exc.problems:
            stdout.write(f"config error: {problem}\n")
        stdout.flush()
        return 2
    except SystemExit as exc:  # --help, or flags argparse could not read
        return int(exc.code or 0)

    from app.ops.logs import new_logger

    logger = new_logger(stdout, config.log_level, config.log_format, config.user_secrets)
    data_dir = Path(config.data_dir).resolve()

    embedded = None
    dsn = config.database_url
    if dsn is None:
        from app.store.embedded_pg import EmbeddedUnavailable, start_embedded

        try:
            embedded = start_embedded(data_dir, logger)
        except EmbeddedUnavailable as exc:
            stdout.write(f"error: {exc}\n")
            return 1
        dsn = embedded.dsn
        logger.info("Using embedded PostgreSQL: %s", dsn)
    try:
        return _run_command(config, logger, dsn, env)
    finally:
        if embedded is not None:
            embedded.stop()


def _run_command(config, logger, dsn: str, env: Mapping[str, str]) -> int:
    import psycopg

    from app.store.db import migrate

    try:
        # Migrations hold a session-level advisory lock across statements: they
        # need a session of their own, not a transaction-pooling proxy.
        applied = migrate(config.database_direct_url or dsn, logger,
                          connect_timeout=config.db_connect_timeout, contract=config.contract)
    except psycopg.Error as exc:
        logger.error("migrations failed: %s", exc)
        return 1
    if config.command == "migrate":
        logger.info("migrations applied: %d", len(applied))
        return 0
    if config.command == "relay":
        # The relay is one process with a registry of its own: a multiprocess directory
        # set for the servers (the pods' shared ConfigMap sets it) must not turn its
        # metrics into files there. Nothing has imported prometheus_client yet.
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        from app.deps import build_relay

        return build_relay(config, logger, dsn).run()

    from app.ops.serve import GunicornApp, gunicorn_options, serving_config

    config = serving_config(config, logger.warning)
    # prometheus_client reads its multiprocess directory from the environment
    # when first imported: with the relay's above, the one place SayPI writes the
    # process environment.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = config.prometheus_multiproc_dir
    from app.server import build_worker_app

    def build():
        return build_worker_app(config, logger, dsn)

    relay = None
    if config.relay_beside:
        from app.ops.beside import Beside

        # The relay uses the server's database (the embedded one too) and its settings.
        relay = Beside([sys.executable, str(Path(__file__).resolve()), "relay"],
                       {**env, "DATABASE_URL": dsn, "RELAY_BESIDE": "false"}, logger)
    try:
        GunicornApp(gunicorn_options(config, logger), build).run()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        if relay is not None:
            relay.stop(config.relay_grace_seconds + 5)
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv, os.environ, sys.stdout))
