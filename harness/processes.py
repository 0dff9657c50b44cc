"""Processes the tests and the benchmark start: each in its own session, stopped by that id.

`apt_install` finds a system tool, installing its Debian package when missing and root.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from harness import ROOT


class Process:
    """A subprocess the benchmark started in its own session (process group), its output in
    `log_path`; stopped by that group's id."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path):
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the process group this server was started in; SIGKILL if it lingers."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self._log.close()

    def log_tail(self, limit: int = 4000) -> str:
        self._log.flush()
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                handle.seek(max(0, size - limit))
                return handle.read().decode("utf-8", "replace")
        except OSError:
            return ""


def apt_install(package: str, binary: Callable[[], str | None], say) -> str:
    """The tool's path (`binary()`), installing the Debian package when it is missing and
    we are root with apt-get; RuntimeError saying what to do when that cannot be."""
    found = binary()
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        why = "apt-get is not available" if apt is None else "this is not running as root"
        raise RuntimeError(f"{package} is not installed and cannot be installed here ({why}). "
                           f"Install the Debian package `{package}` "
                           f"(sudo apt-get install {package}).")
    say(f"{package} is missing: installing the Debian package (apt-get install {package})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "-q", "--no-install-recommends", package]
    done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        subprocess.run([apt, "update", "-q"], env=env, capture_output=True, timeout=600)
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    found = binary()
    if done.returncode != 0 or not found:
        raise RuntimeError(f"apt-get install {package} failed:\n"
                           + (done.stderr or done.stdout)[-2000:])
    return found
