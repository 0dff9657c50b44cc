"""Real services a test starts for itself on free ports, and stops by PID.

- `PgCluster`: a PostgreSQL primary with a streaming hot standby, made with
  PostgreSQL's own tools (initdb, pg_basebackup -R, pg_ctl): the system's
  server binaries when installed, else the ones the embedded `pgserver`
  wheel bundles. As root, the servers run as an unprivileged user, since
  PostgreSQL refuses to run as root.
- `RedisServer`: redis-server keeping nothing on disk.
- `PgBouncer`: pgbouncer in transaction pooling mode in front of a server.

None of them assumes that the machine's own services run.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

SERVICE_USER = "pgserver"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_process(process: subprocess.Popen | None, grace: float = 10.0) -> None:
    """SIGTERM to a process this suite started, SIGKILL if it lingers past `grace`."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def postgres_bin_dir() -> Path:
    system = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_basebackup"),
                    key=lambda p: int(Path(p).parent.parent.name))
    if system:
        return Path(system[-1]).parent
    import pgserver

    return Path(pgserver.__file__).parent / "pginstall" / "bin"


def _service_user() -> str | None:
    """The unprivileged user to run servers as when we are root (created when missing)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "-s", "/bin/false",
                        SERVICE_USER], check=True, capture_output=True)
    return SERVICE_USER


def _owned_dir(prefix: str) -> Path:
    """A fresh directory the service user may own and everyone may traverse."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    user = _service_user()
    if user:
        shutil.chown(path, user, user)
    return path


def wait_until(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after {seconds}s")


class PgNode:
    """One PostgreSQL server of the cluster, controlled with pg_ctl."""

    def __init__(self, bin_dir: Path, pgdata: Path, port: int, user: str | None):
        self.bin_dir = bin_dir
        self.pgdata = pgdata
        self.port = port
        self.user = user

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin_dir / tool), *args], user=self.user,
                              capture_output=True, text=True, check=check, timeout=120,
                              cwd="/")

    def start(self) -> None:
        self.run("pg_ctl", "-D", str(self.pgdata), "-w", "-t", "60", "-l",
                 str(self.pgdata / "server.log"), "-o",
                 f"-p {self.port} -k {self.pgdata} -c listen_addresses=127.0.0.1", "start")

    def stop(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "-D", str(self.pgdata), "-w", "-m", mode, "stop", check=False)

    def restart(self) -> None:
        self.run("pg_ctl", "-D", str(self.pgdata), "-w", "-t", "60", "-m", "fast", "-l",
                 str(self.pgdata / "server.log"), "-o",
                 f"-p {self.port} -k {self.pgdata} -c listen_addresses=127.0.0.1", "restart")

    def running(self) -> bool:
        return self.run("pg_ctl", "-D", str(self.pgdata), "status", check=False).returncode == 0

    def pids(self) -> list[int]:
        """The postmaster's PID and its children's (backends, walreceiver, ...)."""
        postmaster = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        children = []
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                children.append(int(stat.split("/")[2]))
        return [postmaster, *children]

    def freeze(self) -> list[int]:
        """SIGSTOP the server (postmaster first: it forks no more): connections stay open
        and nothing answers. Returns the PIDs for `thaw`."""
        postmaster = self.pids()[0]
        os.kill(postmaster, signal.SIGSTOP)
        children = self.pids()[1:]  # listed once the postmaster can fork no more
        for pid in children:
            os.kill(pid, signal.SIGSTOP)
        return [postmaster, *children]

    @staticmethod
    def thaw(pids: list[int]) -> None:
        for pid in reversed(pids):
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def execute(self, sql: str, dbname: str = "postgres"):
        with psycopg.connect(self.dsn(dbname), autocommit=True, connect_timeout=5) as conn:
            cursor = conn.execute(sql)
            return cursor.fetchall() if cursor.description else None


class PgCluster:
    """A primary and one hot standby streaming from it (see the module docstring)."""

    def __init__(self) -> None:
        self.user = _service_user()
        self.bin_dir = postgres_bin_dir()
        self.base = _owned_dir("saypi-pgcluster-")
        self.primary = PgNode(self.bin_dir, self.base / "primary", free_port(), self.user)
        self.standby = PgNode(self.bin_dir, self.base / "standby", free_port(), self.user)

    def start(self) -> PgCluster:
        primary = self.primary
        primary.run("initdb", "-D", str(primary.pgdata), "-U", "postgres", "--auth=trust",
                    "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
        with open(primary.pgdata / "postgresql.conf", "a") as conf:
            conf.write("wal_level = replica\nmax_wal_senders = 5\nfsync = off\n"
                       "synchronous_commit = off\nhot_standby_feedback = on\n"
                       "max_connections = 200\n")
        with open(primary.pgdata / "pg_hba.conf", "a") as hba:
            hba.write("host replication all 127.0.0.1/32 trust\n")
        primary.start()
        standby = self.standby
        standby.run("pg_basebackup", "-D", str(standby.pgdata), "-h", "127.0.0.1", "-p",
                    str(primary.port), "-U", "postgres", "-R", "-X", "stream", "--no-sync")
        standby.pgdata.chmod(0o700)
        standby.start()
        wait_until(lambda: standby.execute("SELECT pg_is_in_recovery()")[0][0], 60,
                   "the standby")
        return self

    def create_database(self, name: str) -> tuple[str, str]:
        """A database on the primary, and (DSN on the primary, DSN on the standby) once the
        standby has it."""
        self.primary.execute(f'CREATE DATABASE "{name}"')
        wait_until(lambda: self.standby.execute(
            f"SELECT 1 FROM pg_database WHERE datname = '{name}'"), 30, "the replicated database")
        return self.primary.dsn(name), self.standby.dsn(name)

    def wait_replayed(self, seconds: float = 30.0) -> None:
        """Until the standby has replayed everything the primary had written when called."""
        target = self.primary.execute(
            "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint")[0][0]
        wait_until(lambda: self.standby.execute(
            "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint")[0][0] >= target,
            seconds, "the standby's replay")

    def pause_replay(self) -> None:
        self.standby.execute("SELECT pg_wal_replay_pause()")

    def resume_replay(self) -> None:
        self.standby.execute("SELECT pg_wal_replay_resume()")

    def close(self) -> None:
        for node in (self.standby, self.primary):
            node.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


class RedisServer:
    """redis-server on a free loopback port, nothing kept on disk; stopped by PID."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tempfile.gettempdir())
        wait_until(self._answers, 20, "redis-server")
        return self

    def _answers(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")

    def script_calls(self) -> int:
        """Script calls (EVAL, EVALSHA) this server has answered since it started."""
        import redis

        with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5) as client:
            stats = client.info("commandstats")
        return sum(v["calls"] for k, v in stats.items() if k.startswith("cmdstat_eval"))

    def stop(self) -> None:
        stop_process(self.process)

    def restart(self) -> None:
        self.stop()
        self.start()


class PgBouncer:
    """pgbouncer in transaction pooling mode on a free port, in front of host:port."""

    def __init__(self, server_host: str, server_port: int, pool_size: int = 20):
        self.port = free_port()
        self.user = _service_user()
        self.dir = _owned_dir("saypi-pgbouncer-")
        (self.dir / "users.txt").write_text('"postgres" ""\n')
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={server_host} port={server_port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\n"
            f"unix_socket_dir = {self.dir}\n"
            "auth_type = trust\n"
            f"auth_file = {self.dir / 'users.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {pool_size}\nmax_client_conn = 500\n"
            "ignore_startup_parameters = extra_float_digits\n"
            "server_reset_query =\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\n")
        for name in ("users.txt", "pgbouncer.ini"):
            (self.dir / name).chmod(0o644)
        self.process: subprocess.Popen | None = None

    def dsn(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> PgBouncer:
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        self.process = subprocess.Popen([binary, str(self.dir / "pgbouncer.ini")],
                                        user=self.user, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, cwd="/")
        wait_until(lambda: socket.create_connection(("127.0.0.1", self.port), 1).close()
                   is None, 20, "pgbouncer")
        return self

    def stop(self) -> None:
        stop_process(self.process)
        shutil.rmtree(self.dir, ignore_errors=True)
