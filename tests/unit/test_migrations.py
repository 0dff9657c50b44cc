"""Migrations in a rolling deploy, read without a database: the contract header, what a
build serves, and the shipped migrations keep the previous release working.
"""

from __future__ import annotations

import re

import pytest

from app.store.db import (
    Migration,
    load_migrations,
    serves_with,
)

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


def test_the_contract_header_is_read_from_the_leading_comments_only():
    assert CONTRACT.contract and not EXPAND.contract and not LATER.contract
    assert Migration(1, "x", "--saypi:   Contract\nDROP TABLE x;").contract
    assert not Migration(1, "x", "SELECT 1;\n-- saypi: contract\n").contract
    assert not Migration(1, "x", "-- saypi: contractual obligations\nSELECT 1;").contract


def test_a_build_serves_once_only_its_contract_step_and_what_follows_is_pending():
    """The readiness rule is migrate()'s stop rule (a contract, then an expand, included)."""
    shipped = load_migrations()
    applied = {m.version for m in shipped}
    plan = [*shipped, EXPAND, CONTRACT, LATER]
    assert serves_with(shipped, applied)
    assert not serves_with(plan, applied)  # the expand migration is pending
    assert serves_with(plan, applied | {9001})  # the contract step and LATER behind it wait
    assert not serves_with(plan, applied | {9001, 9002})  # contracted: LATER is needed now
    assert serves_with(plan, applied | {9001, 9002, 9003})


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
