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

from app.ops.health import HEALTHY, UNHEALTHY, migrations_checker
from app.store.db import (
    load_migrations,
    migrate,
)
from harness.saypi import server_env
from harness.services import stop_process
from tests.conftest import run_inline
from tests.unit.test_migrations import CONTRACT, EXPAND, LATER

LOGGER = logging.getLogger("test")

def versions(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [row[0] for row in conn.execute(
            "SELECT version FROM schema_migrations ORDER BY version")]


def columns(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {row[0] for row in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'lines'")}


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
    from app.store.db import Database, pool_settings

    dsn = postgres.new_database()
    shipped = load_migrations()
    plan = [*shipped, EXPAND, CONTRACT]
    config = Config.from_env({"DB_POOL_MIN": "1", "DB_POOL_MAX": "2"}, [])
    db = Database(dsn, pool_settings(config), LOGGER)
    db.open(wait_seconds=5)
    try:
        check = migrations_checker(db, plan, 1.0)
        assert check().status == UNHEALTHY  # the expand migration has not run
        migrate(dsn, LOGGER, migrations=plan)
        result = check()
        assert result.status == HEALTHY, result
        assert "contract migrations pending" in result.message
        migrate(dsn, LOGGER, contract=True, migrations=plan)
        assert check().message.startswith("schema is current")
        # The previous release (it shipped up to the expand) serves the contracted schema.
        previous = migrations_checker(db, [*shipped, EXPAND], 1.0)
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


# --- the previous release against the new schema -----------------------------------------
def git(*args: str) -> str:
    import subprocess

    from harness import ROOT

    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise LookupError(done.stderr.strip())
    return done.stdout.strip()


def previous_release() -> tuple[str, str]:
    """The commit before the newest migration was added, and why it is the one (or skip)."""
    import shutil

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    newest = load_migrations()[-1]
    try:
        added = git("log", "--diff-filter=A", "--format=%H", "--",
                    f":(glob)**/migrations/{newest.version:04d}_*.sql").split()
    except LookupError as exc:
        pytest.skip(f"not a git checkout with history: {exc}")
    if not added:
        pytest.skip(f"{newest.label} is not in this checkout's history yet")
    first = added[-1]  # the oldest commit adding it (files moved since are re-added)
    try:
        parent = git("rev-parse", "--verify", "-q", f"{first}^")
        before = git("ls-tree", "-r", "--name-only", parent)
    except LookupError:
        pytest.skip(f"{newest.label} came with the first commit")
    if not re.search(r"migrations/\d{4}_[^/]*\.sql$", before, re.MULTILINE):
        pytest.skip(f"{newest.label} is the first migration: no release before it had a schema")
    return parent, f"the parent of {first[:12]}, which added {newest.label}"


@pytest.mark.slow
def test_the_previous_release_serves_from_the_new_schema(postgres, tmp_path):
    """Expand/contract for real: the release before the newest migration, run from its own
    source (git archive), against a database the current code migrated (expand steps only,
    as during a rollout). It starts, is ready, and creates and reads users, conversations
    and lines."""
    import subprocess
    import sys
    import tarfile

    import httpx

    from tests.conftest import eventually

    commit, why = previous_release()
    source = tmp_path / "previous"
    source.mkdir()
    archive = tmp_path / "previous.tar"
    git("archive", "--format=tar", "-o", str(archive), commit)
    with tarfile.open(archive) as tar:
        tar.extractall(source, filter="data")
    dsn = postgres.new_database(migrated=False)
    migrate(dsn, LOGGER)  # the current release's expand migrations
    env = server_env(dsn, tmp_path)
    url = f"http://127.0.0.1:{env['PORT']}"
    log_path = tmp_path / "previous.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, str(source / "run.py"), "serve"],
                                   cwd=source, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)

    def ready() -> bool:
        assert process.poll() is None, (why, log_path.read_text())
        return httpx.get(f"{url}/health/ready", timeout=2).status_code == 200

    try:
        assert eventually(ready, seconds=90), (why, log_path.read_text())
        user = httpx.post(f"{url}/users", data={"name": "Previous"}, timeout=10)
        assert user.status_code == 201, (why, user.text)
        auth = {"Authorization": f"Bearer {user.json()['token']}"}
        convo = httpx.post(f"{url}/conversations", data={"heading": "Old code"}, headers=auth,
                           timeout=10)
        assert convo.status_code == 201, (why, convo.text)
        cid = convo.json()["id"]
        line = httpx.post(f"{url}/conversations/{cid}/lines", headers=auth, timeout=10,
                          json={"text": "still here", "animal": "default", "mood": "default"})
        assert line.status_code == 201, (why, line.text)
        read = httpx.get(f"{url}/conversations/{cid}", headers=auth, timeout=10)
        assert read.status_code == 200 and "still here" in read.text, (why, read.text)
        assert "Traceback" not in log_path.read_text(), why
    finally:
        stop_process(process, grace=30)
