"""SayPI started as production starts it, `python run.py serve`, with a test's settings."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from harness import ROOT
from harness.services import free_port

SECRET = "test-secret-0123456789abcdef"


class Server:
    """A SayPI started as production starts it: `python run.py serve` (which calls run())."""

    def __init__(self, env: dict[str, str], log_path: Path, argv: list[str] | None = None):
        self.port = int(env["PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = env
        self._log = open(log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), *(argv or ["serve"])],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def wait_ready(self, timeout: float = 60.0) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"SayPI exited with {self.process.returncode}:\n{self.logs()}")
            try:
                if httpx.get(self.url + "/health/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"SayPI not ready after {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        if not self._log.closed:  # still running; after stop() the file is complete
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[str]:
        return self.logs().splitlines()

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self._log.close()
        return self.process.returncode


def server_env(database_url: str, tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "DATABASE_URL": database_url,
        "PORT": str(free_port()),
        "DATA_DIR": str(tmp_path / "data"),
        "USER_SECRETS": SECRET,
        "WEB_CONCURRENCY": "2",
        "THREADS": "4",
        "DB_POOL_MIN": "1",
        "DB_POOL_MAX": "4",
        "LOG_FORMAT": "json",
        "RATE_LIMIT_USER_PER_MINUTE": "0",
        "RATE_LIMIT_IP_PER_MINUTE": "0",
        "FAULT_INJECTION": "true",
        "GRACEFUL_TIMEOUT": "10",
        "HEALTH_CACHE_SECONDS": "0.2",
    }
    if os.environ.get("COWPATH"):
        env["COWPATH"] = os.environ["COWPATH"]
    env.update(overrides)
    return env
