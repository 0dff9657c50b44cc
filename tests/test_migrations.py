"""Migrations in a rolling deploy: expand, then (later, on purpose) contract.

While a release rolls out, instances of the previous release serve from the
new schema. So a migration either keeps the previous release working
(expand) or is flagged `-- saypi: contract` and waits for
`run.py migrate --contract`, run once the previous release is gone. The
runner refuses the contract step otherwise; these tests drive it against a
real PostgreSQL with the shipped migrations plus made-up ones.
"""

from __future__ import annotations

import logging
import re

import psycopg
import pytest

from app.platform.db import (
    Migration,
    expected_schema_version,
    load_migrations,
    migrate,
    required_schema_version,
)
from app.platform.health import HEALTHY, UNHEALTHY, migrations_checker
from tests.conftest import run_inline, server_env

LOGGER = logging.getLogger("test")

EXPAND = Migration(9001, "add_colour", "-- Lines may carry a colour.\n"
                   "ALTER TABLE lines ADD COLUMN colour text;\n")
CONTRACT = Migration(9002, "drop_colour", "-- The colour is gone for good.\n"
                     "-- saypi: contract\n\n"
                     "ALTER TABLE lines DROP COLUMN colour;\n")
LATER = Migration(9003, "add_shade", "ALTER TABLE lines ADD COLUMN shade text;\n")

# Statements that break a release still running: it reads or writes what they
# remove or change. Any of them in a migration needs the contract flag.
BREAKING = re.compile(
    r"\bDROP\s+(TABLE|COLUMN|VIEW|FUNCTION|TYPE|SCHEMA)\b|\bRENAME\b|"
    r"\bALTER\s+COLUMN\s+\S+\s+(SET\s+DATA\s+)?TYPE\b|\bSET\s+NOT\s+NULL\b",
    re.IGNORECASE)


def versions(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [row[0] for row in conn.execute(
            "SELECT version FROM schema_migrations ORDER BY version")]


def columns(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {row[0] for row in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'lines'")}


def test_the_contract_header_is_read_from_the_leading_comments_only():
    assert CONTRACT.contract and not EXPAND.contract and not LATER.contract
    assert Migration(1, "x", "--saypi:   Contract\nDROP TABLE x;").contract
    assert not Migration(1, "x", "SELECT 1;\n-- saypi: contract\n").contract
    assert not Migration(1, "x", "-- saypi: contractual obligations\nSELECT 1;").contract
    shipped = load_migrations()
    assert expected_schema_version([*shipped, EXPAND, CONTRACT]) == 9002
    assert required_schema_version([*shipped, EXPAND, CONTRACT]) == 9001
    assert required_schema_version(shipped) == expected_schema_version(shipped)


def test_a_contract_migration_waits_for_the_contract_step(postgres, caplog):
    dsn = postgres.new_database()
    shipped = load_migrations()
    plan = [*shipped, EXPAND, CONTRACT, LATER]

    with caplog.at_level(logging.INFO, logger="test"):
        assert migrate(dsn, LOGGER, migrations=plan) == [9001]
    assert versions(dsn)[-1] == 9001
    assert "colour" in columns(dsn)
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert "9002_drop_colour is a contract step" in warning.getMessage()
    assert "9003_add_shade" in warning.getMessage()  # waits behind it
    assert "--contract" in warning.getMessage()

    assert migrate(dsn, LOGGER, migrations=plan) == []  # again: still refused, nothing done
    assert migrate(dsn, LOGGER, contract=True, migrations=plan) == [9002, 9003]
    assert "colour" not in columns(dsn) and "shade" in columns(dsn)
    assert migrate(dsn, LOGGER, contract=True, migrations=plan) == []


def test_readiness_needs_the_expand_migrations_but_not_the_contract_ones(postgres):
    from app.config import Config
    from app.platform.db import Database, pool_settings

    dsn = postgres.new_database()
    shipped = load_migrations()
    plan = [*shipped, EXPAND, CONTRACT]
    config = Config.from_env({"DB_POOL_MIN": "1", "DB_POOL_MAX": "2"}, [])
    db = Database(dsn, pool_settings(config), LOGGER)
    db.open(wait_seconds=5)
    try:
        check = migrations_checker(db, expected_schema_version(plan), 1.0,
                                   required_schema_version(plan))
        assert check().status == UNHEALTHY  # the expand migration has not run
        migrate(dsn, LOGGER, migrations=plan)
        result = check()
        assert result.status == HEALTHY, result
        assert "contract migrations pending" in result.message
        migrate(dsn, LOGGER, contract=True, migrations=plan)
        assert check().message.startswith("schema is current")
        # The previous release (it shipped up to the expand) serves the contracted schema.
        previous = migrations_checker(db, 9001, 1.0)
        assert previous().status == HEALTHY
    finally:
        db.close()


def test_run_migrate_takes_the_contract_flag_and_serve_refuses_it(postgres, tmp_path):
    env = server_env(postgres.new_database(migrated=False), tmp_path)
    code, out = run_inline(["serve", "--contract"], env)
    assert code == 2
    assert "--contract: only with the migrate command" in out
    code, out = run_inline(["migrate", "--contract"], env)
    assert code == 0, out
    assert versions(env["DATABASE_URL"]) == [m.version for m in load_migrations()]


def test_shipped_migrations_keep_the_previous_release_working():
    """Every migration after the first either only expands, or carries the contract flag."""
    for migration in load_migrations()[1:]:
        code = "\n".join(line.split("--", 1)[0] for line in migration.sql.splitlines())
        if BREAKING.search(code):
            assert migration.contract, (
                f"{migration.label} removes or changes what the previous release uses: "
                f"flag it `-- saypi: contract` (see deploy/README.md, migrations)")


@pytest.mark.parametrize("sql", ["ALTER TABLE lines DROP COLUMN text;",
                                 "ALTER TABLE lines RENAME COLUMN text TO body;",
                                 "ALTER TABLE lines ALTER COLUMN text TYPE varchar(10);",
                                 "ALTER TABLE users ALTER COLUMN name SET NOT NULL;",
                                 "DROP TABLE moods;"])
def test_breaking_statements_are_recognised(sql):
    assert BREAKING.search(sql)
    assert not BREAKING.search("ALTER TABLE lines ADD COLUMN colour text; "
                               "CREATE INDEX CONCURRENTLY lines_colour ON lines (colour);")
