"""Pushpin for the tests and the fleet: deploy/pushpin/pushpin.conf on free ports, its own rundir.

The configuration is the one deploy/pushpin/README.md documents; only what must differ
per instance is rewritten: the rundir and logdir, every port (clients, push_in_http, the
tcp:// specs), the routes file (SayPI's address) and sig_key.
"""

from __future__ import annotations

import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from harness import ROOT
from harness.processes import Process, apt_install
from harness.services import free_port

CONFIG = ROOT / "deploy" / "pushpin" / "pushpin.conf"


class PushpinUnavailable(Exception):
    pass


def ensure_pushpin(say: Callable[[str], None]) -> str:
    """pushpin's path; installs the Debian package when missing and we are root with apt-get."""
    try:
        return apt_install("pushpin", lambda: shutil.which("pushpin"), say)
    except RuntimeError as exc:
        raise PushpinUnavailable(str(exc)) from None


def render_config(values: dict[str, str], template: str | None = None) -> str:
    """deploy/pushpin/pushpin.conf with each `key=` line of `values` replaced."""
    text = CONFIG.read_text() if template is None else template
    for key, value in values.items():
        text, found = re.subn(rf"^{re.escape(key)}=.*$", f"{key}={value}", text,
                              flags=re.MULTILINE)
        if found != 1:
            raise ValueError(f"pushpin.conf must set {key} exactly once (found {found})")
    return text


class Pushpin(Process):
    """A real Pushpin on 127.0.0.1 in front of `backends` (host:port), in its own session.

    `url` is where clients connect, `publish_url` the push_in_http base the relay
    publishes to. `restart()` stops it and starts it again on the same ports.
    """

    def __init__(self, pushpin: str, backends: list[str], grip_key: str, work: Path):
        self.pushpin = pushpin
        self.extra_args: list[str] = []
        self.work = work
        # ipc:// socket paths must stay short (108 bytes): not under pytest's tmp_path.
        self.rundir = Path(tempfile.mkdtemp(prefix="pushpin-", dir="/tmp"))
        (work / "pushpin-log").mkdir(exist_ok=True)
        self.port, self.publish_port = free_port(), free_port()
        routes = work / "pushpin-routes"
        routes.write_text("* " + " ".join(backends) + "\n")  # several targets: tried in turn
        self.config_path = work / "pushpin.conf"
        self.config_path.write_text(render_config({
            "rundir": str(self.rundir), "logdir": str(work / "pushpin-log"),
            "http_port": str(self.port), "push_in_http_port": str(self.publish_port),
            "push_in_spec": f"tcp://127.0.0.1:{free_port()}",
            "push_in_sub_specs": f"tcp://127.0.0.1:{free_port()}",
            "command_spec": f"tcp://127.0.0.1:{free_port()}",
            "routesfile": str(routes), "sig_key": grip_key}))
        self.url = f"http://127.0.0.1:{self.port}"
        self.publish_url = f"http://127.0.0.1:{self.publish_port}"
        self._starts = 0
        self._start()

    def _start(self) -> None:
        self._starts += 1
        super().__init__("pushpin", [self.pushpin, "--config", str(self.config_path),
                                     "--merge-output", *self.extra_args],
                         {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
                         self.work / f"pushpin-{self._starts}.log")
        deadline = time.monotonic() + 20
        while not (_accepting(self.port) and _accepting(self.publish_port)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise PushpinUnavailable(f"pushpin did not start:\n{self.log_tail()}")
            time.sleep(0.05)
        time.sleep(0.3)  # its handler connects to the proxy's sockets just after listening

    def restart(self) -> None:
        super().stop(10)
        deadline = time.monotonic() + 10
        while (_accepting(self.port) or _accepting(self.publish_port)) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        self._start()

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        shutil.rmtree(self.rundir, ignore_errors=True)


def _accepting(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0
