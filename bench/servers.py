"""The servers the benchmark starts, when they are ready, and what they cost.

Also the /proc readings the report needs: a gunicorn master's workers, their
resident memory and CPU time, and how much CPU every other process on the
machine used during a run (noise from outside the benchmark).
"""

from __future__ import annotations

import http.client
import os
import sys
import time
from pathlib import Path

from harness.processes import Process

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class ServerFailed(RuntimeError):
    pass



class Server(Process):
    """A gunicorn-served app on 127.0.0.1:port, started as a subprocess in its own session."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int,
                 log_path: Path, ready_path: str, workers: int):
        super().__init__(name, argv, env, log_path)
        self.port = port
        self.ready_path = ready_path
        self.workers = workers

    # --- readiness -----------------------------------------------------------------
    def wait_ready(self, timeout: float = 90.0) -> Server:
        """Ready when every worker is forked and fresh connections all get answers.

        With reuse_port each worker listens on its own socket; starting load
        while one is still loading would pin keep-alive connections to the
        other for the whole run.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerFailed(f"{self.name} exited with {self.process.returncode}; "
                                   f"see its log:\n{self.log_tail()}")
            pids = self.worker_pids()
            if len(pids) >= self.workers and all(self._answers() for _ in range(16)):
                time.sleep(0.3)
                return self
            time.sleep(0.2)
        raise ServerFailed(f"{self.name} not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def _answers(self) -> bool:
        try:
            status, _ = self.get(self.ready_path, timeout=5)
            return status == 200
        except OSError:
            return False

    def get(self, path: str, headers: dict[str, str] | None = None,
            timeout: float = 10) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- /proc ---------------------------------------------------------------------
    def worker_pids(self) -> list[int]:
        return children_of(self.process.pid)

    def worker_rss(self) -> dict[int, int]:
        return {pid: rss_bytes(pid) for pid in self.worker_pids()}

    def worker_cpu(self) -> dict[int, float]:
        return {pid: cpu_seconds(pid) for pid in self.worker_pids()}



def python() -> str:
    return sys.executable


def base_env(env, controlled: set[str], home: str) -> dict[str, str]:
    """A server's environment: PATH, HOME, LANG, and every SayPI setting set in `env`
    that the benchmark does not decide itself (`controlled`)."""
    from app.config import SETTINGS

    out = {"PATH": env.get("PATH", "/usr/bin:/bin"), "HOME": env.get("HOME", home),
           "LANG": env.get("LANG", "C.UTF-8")}
    for setting in SETTINGS:
        if setting.env not in controlled and setting.env in env:
            out[setting.env] = env[setting.env]
    return out


# --- /proc helpers ---------------------------------------------------------------------
def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) may contain spaces: split after its closing paren.
    return raw[raw.rfind(")") + 2:].split()


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None and int(fields[1]) == pid:
            found.append(int(entry))
    return sorted(found)


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def cpu_seconds(pid: int) -> float:
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


class CpuSnapshot:
    """Machine-wide busy CPU time, and CPU time per group of the benchmark's processes.

    Busy time comes from /proc/stat (user, nice, system, irq, softirq, steal).
    `roots` names the benchmark's process trees (a server's master, the
    PostgreSQL postmaster, the benchmark itself); each process counts for its
    nearest root, so a server started by the benchmark is its own group and
    wrk, once reaped, counts for the benchmark (through its cutime).
    PostgreSQL's checkpointer, autovacuum and writers count apart, as
    `postgres_background`, so that `postgres` is the backends serving clients.
    Whatever the machine was busy with beyond the groups is "other":
    processes outside the benchmark, or the hypervisor (steal).
    """

    def __init__(self, roots: dict[int, str]) -> None:
        with open("/proc/stat") as handle:
            parts = handle.readline().split()
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in parts[1:9])
        self.busy = (user + nice + system + irq + softirq + steal) / CLOCK_TICKS
        parent: dict[int, int] = {}
        times: dict[int, tuple[float, float]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            fields = _stat_fields(int(entry))
            if fields is None:
                continue
            pid = int(entry)
            parent[pid] = int(fields[1])
            utime, stime, cutime, cstime = (int(x) / CLOCK_TICKS for x in fields[11:15])
            times[pid] = (utime + cutime, stime + cstime)
        self.pids: dict[int, tuple[str, float, float]] = {}
        for pid, (u, sy) in times.items():
            group = _group_of(pid, roots, parent)
            if group in ("postgres", "primary", "replica") and _postgres_background(pid):
                group = f"{group}_background"
            if group is not None:
                self.pids[pid] = (group, u, sy)

    def since(self, before: CpuSnapshot) -> dict[str, float]:
        """CPU seconds between the snapshots: `<group>_user`, `<group>_system`, and `other`."""
        out: dict[str, float] = {}
        for pid, (group, u, sy) in self.pids.items():
            _, u0, s0 = before.pids.get(pid, (group, 0.0, 0.0))
            out[f"{group}_user"] = out.get(f"{group}_user", 0.0) + u - u0
            out[f"{group}_system"] = out.get(f"{group}_system", 0.0) + sy - s0
        own = sum(out.values())
        out["other"] = max(0.0, (self.busy - before.busy) - own)
        return {k: round(max(0.0, v), 3) for k, v in out.items()}


_PG_BACKGROUND = (b"checkpointer", b"autovacuum", b"background writer", b"walwriter",
                  b"logical replication", b"archiver")


def _postgres_background(pid: int) -> bool:
    """A PostgreSQL process that serves no client: checkpointer, autovacuum, writers."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            title = handle.read(200)
    except OSError:
        return False
    return any(name in title for name in _PG_BACKGROUND)


def _group_of(pid: int, roots: dict[int, str], parent: dict[int, int]) -> str | None:
    for _ in range(64):
        if pid in roots:
            return roots[pid]
        if pid <= 1:
            return None
        pid = parent.get(pid, 1)
    return None
