"""deploy/Dockerfile built and run for real: a read-only container as uid 10001 against the
suite's PostgreSQL, the migration Job's command, Docker's health status, a SIGTERM drain,
and nothing but the server's dependencies inside (harness/containers.py runs the engine).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime

import httpx
import psycopg
import pytest
import yaml

from app.store.db import load_migrations
from harness import ROOT, containers
from harness.saypi import SECRET
from harness.services import free_port
from tests.conftest import eventually

# The first run makes the base image (debootstrap, minutes) within the first test.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

TAG = "saypi-test:latest"
UID = 10001
# As the Deployment's readOnlyRootFilesystem with its emptyDir on /tmp.
READ_ONLY = ("--read-only", "--tmpfs", "/tmp")
SOCKET_DIR = "/run/postgresql"


@pytest.fixture(scope="session")
def engine(tmp_path_factory) -> Iterator[containers.Engine]:
    log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    engine = containers.start_engine(log)
    if isinstance(engine, str):
        pytest.skip(f"no Docker engine: {engine}")
    yield engine
    engine.stop()


@pytest.fixture(scope="session")
def image(engine, tmp_path_factory) -> str:
    workdir = tmp_path_factory.mktemp("image")
    made = containers.ensure_base_image(engine.docker, workdir)
    started = time.monotonic()
    containers.build_image(engine.docker, ROOT, workdir, TAG)
    built = time.monotonic() - started
    size = int(engine.docker("image", "inspect", "--format", "{{.Size}}", TAG).stdout)
    print(f"\nbase image {containers.BASE_IMAGE}: "
          f"{f'made in {made:.0f} s' if made is not None else 'cached'}; "
          f"{TAG} built in {built:.0f} s, {size / 1e6:.0f} MB")
    return TAG


def container_database(dsn: str) -> tuple[str, tuple[str, ...]]:
    """The DSN a container on the host's network uses, and the mount a Unix socket needs
    (the embedded PostgreSQL listens on one only)."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    host = params.get("host") or ""
    if not host.startswith("/"):
        return dsn, ()
    socket = f".s.PGSQL.{params.get('port') or 5432}"
    params["host"] = SOCKET_DIR
    return (psycopg.conninfo.make_conninfo(**params),
            ("-v", f"{host}/{socket}:{SOCKET_DIR}/{socket}"))


def server_env(database_url: str, **overrides: str) -> dict[str, str]:
    env = {"DATABASE_URL": database_url, "USER_SECRETS": SECRET,
           "HOST": "127.0.0.1", "PORT": str(free_port()),
           "WEB_CONCURRENCY": "2", "THREADS": "4", "DB_POOL_MIN": "1", "DB_POOL_MAX": "4",
           "RATE_LIMIT_USER_PER_MINUTE": "0", "RATE_LIMIT_IP_PER_MINUTE": "0",
           "GRACEFUL_TIMEOUT": "10"}
    env.update(overrides)
    return env


def docker_time(text: str) -> float:
    """Seconds of one of Docker's UTC timestamps (RFC 3339, up to nanoseconds)."""
    whole, _, fraction = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(whole).timestamp() + float(f"0.{fraction or 0}")


class Container:
    """SayPI in a container of the image, serving on the host's network."""

    def __init__(self, engine, image: str, database_url: str, **overrides: str):
        self.docker = engine.docker
        url, mounts = container_database(database_url)
        self.env = server_env(url, **overrides)
        self.url = f"http://127.0.0.1:{self.env['PORT']}"
        started = engine.run(image, env=self.env, options=(*READ_ONLY, *mounts))
        assert started.returncode == 0, started.stderr
        self.id = started.stdout.strip()

    def inspect(self) -> dict:
        return json.loads(self.docker("inspect", self.id).stdout)[0]

    def logs(self) -> str:
        done = self.docker("logs", self.id, check=False)
        return done.stdout + done.stderr

    def exec(self, *command: str) -> str:
        return self.docker("exec", self.id, *command).stdout

    def wait_ready(self, seconds: float = 90) -> Container:
        def ready() -> bool:
            assert self.inspect()["State"]["Running"], self.logs()
            return httpx.get(self.url + "/health/ready", timeout=2).status_code == 200
        assert eventually(ready, seconds), self.logs()
        return self


@pytest.fixture(scope="module")
def served(engine, image, postgres) -> Iterator[Container]:
    container = Container(engine, image, postgres.new_database())
    yield container.wait_ready()
    container.docker("rm", "-f", container.id, check=False)  # not left serving the suite


# --- the tests ---------------------------------------------------------------------------
def test_serves_the_first_conversation_as_uid_10001_on_a_read_only_root(served):
    # The README's first conversation, as its curl commands send it.
    with httpx.Client(base_url=served.url, timeout=10) as client:
        user = client.post("/users", data={"name": "Ada"})
        assert user.status_code == 201, user.text
        auth = {"Authorization": f"Bearer {user.json()['token']}"}
        conversation = client.post("/conversations", headers=auth, data={"heading": "Hello"})
        assert conversation.status_code == 201, conversation.text
        cid = conversation.json()["id"]
        line = client.post(f"/conversations/{cid}/lines", headers=auth,
                           json={"text": "Moo, world", "mood": "wired", "animal": "owl"})
        assert line.status_code == 201, line.text
        text = client.get(f"/conversations/{cid}", headers={**auth, "Accept": "text/plain"})
    assert text.status_code == 200
    assert text.headers["content-type"].startswith("text/plain")
    assert "Hello" in text.text and "< Moo, world >" in text.text

    # Every process in the container (the gunicorn master is PID 1) runs as 10001.
    uids = served.exec("python", "-c", (
        "import os\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    status = open(f'/proc/{pid}/status').read()\n"
        "    print(status.split('Uid:')[1].split()[0])\n"))
    assert set(uids.split()) == {str(UID)}, uids
    host_config = served.inspect()["HostConfig"]
    assert host_config["ReadonlyRootfs"] is True
    assert served.docker("exec", served.id, "touch", "/app/x", check=False).returncode != 0


def test_docker_health_status_turns_healthy_from_the_images_healthcheck(served):
    health = served.inspect()["Config"]["Healthcheck"]
    assert "/health/live" in " ".join(health["Test"])

    def healthy() -> bool:
        state = served.inspect()["State"]
        assert state["Health"]["Status"] in ("starting", "healthy"), state["Health"]
        return state["Health"]["Status"] == "healthy"

    # The first check runs one interval (10 s) after the start.
    assert eventually(healthy, seconds=60, every=0.5), served.inspect()["State"]["Health"]
    state = served.inspect()["State"]
    passed = next(check for check in state["Health"]["Log"] if check["ExitCode"] == 0)
    print(f"\nhealthy {docker_time(passed['End']) - docker_time(state['StartedAt']):.1f} s "
          f"after the start")


def test_the_migration_jobs_command_migrates_in_the_image(engine, image, postgres):
    job = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "migrate-job.yaml").read_text())
    (spec,) = job["spec"]["template"]["spec"]["containers"]
    url = postgres.new_database(migrated=False)
    dsn, mounts = container_database(url)
    done = engine.run(image, *spec["command"], env=server_env(dsn),
                      options=(*READ_ONLY, *mounts), detach=False, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    with psycopg.connect(url) as conn:
        versions = [row[0] for row in conn.execute(
            "SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == sorted(m.version for m in load_migrations())


def test_docker_stop_lets_the_request_in_flight_finish_and_exits_0(engine, image, postgres):
    url = postgres.new_database()
    # A statement timeout well above the lock held below, which makes the request slow.
    container = Container(engine, image, url, DB_STATEMENT_TIMEOUT="60000").wait_ready()
    client = httpx.Client(base_url=container.url, timeout=60)
    token = client.post("/users", data={"name": "Ada"}).json()["token"]
    client.headers["Authorization"] = f"Bearer {token}"
    cid = client.post("/conversations", data={"heading": "Hello"}).json()["id"]

    result: dict = {}

    def add_line() -> None:
        try:
            result["response"] = client.post(f"/conversations/{cid}/lines",
                                             json={"text": "Moo, world", "animal": "owl"})
        except httpx.HTTPError as exc:
            result["error"] = repr(exc)

    def stop() -> None:
        started = time.monotonic()
        result["stop"] = engine.docker("stop", "--time", "30", container.id, timeout=60)
        result["stop_seconds"] = time.monotonic() - started
        result["stopped"] = time.monotonic()

    # Polled on a connection of its own: a transaction sees one snapshot of the activity.
    with psycopg.connect(url, autocommit=True) as lock, \
            psycopg.connect(url, autocommit=True) as watch:
        with lock.transaction():
            lock.execute("LOCK TABLE lines IN SHARE MODE")  # reads go on, inserts wait
            writer = threading.Thread(target=add_line)
            writer.start()

            def waiting_on_the_lock() -> bool:
                return watch.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'").fetchone()[0] > 0

            assert eventually(waiting_on_the_lock, seconds=30), container.logs()
            stopper = threading.Thread(target=stop)
            stopper.start()
            # SIGTERM has reached gunicorn while the request still waits.
            assert eventually(lambda: "Handling signal: term" in container.logs(), 30), (
                container.logs())
            time.sleep(1.0)
            assert "response" not in result and "error" not in result
            released = time.monotonic()
        writer.join(30)
        stopper.join(60)
    client.close()

    assert result.get("response") is not None, result
    assert result["response"].status_code == 201, result["response"].text
    state = container.inspect()["State"]
    assert state["Running"] is False
    assert state["ExitCode"] == 0, container.logs()  # not 137: no SIGKILL at the grace's end
    assert result["stop"].returncode == 0
    print(f"\ndocker stop: {result['stop_seconds']:.1f} s in all, of which "
          f"{result['stopped'] - released:.1f} s after the request was let go")


def test_the_image_holds_the_server_only(engine, image):
    done = engine.run(image, "python", "-m", "pip", "list", "--format=json", detach=False,
                      options=READ_ONLY)
    assert done.returncode == 0, done.stderr
    installed = {package["name"].lower() for package in json.loads(done.stdout)}
    assert {"flask", "gunicorn", "psycopg", "saypi"} <= installed
    for name in ("pgserver", "pytest", "httpx", "hypothesis", "schemathesis", "playwright",
                 "ruff", "kubernetes-validate", "matplotlib", "py-spy"):
        assert name not in installed, name
    compilers = ("gcc", "cc", "c++", "g++", "clang", "tcc", "ld", "as", "make")
    found = engine.run(image, "python", "-c", (
        "import shutil, sys\n"
        f"print(' '.join(c for c in {compilers!r} if shutil.which(c)))\n"),
        detach=False, options=READ_ONLY)
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == []
    size = int(engine.docker("image", "inspect", "--format", "{{.Size}}", image).stdout)
    print(f"\nimage {image}: {size / 1e6:.0f} MB")
