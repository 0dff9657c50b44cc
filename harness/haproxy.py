"""HAProxy for `python -m bench fleet`: deploy/haproxy/haproxy.cfg, a server line per instance.

The configuration is the one deploy/README.md documents; its `server saypi1
"${SAYPI_BACKEND}" ...` line is the template of a server, repeated here once
per SayPI instance (saypi1, saypi2, ...), and a stats socket is added to the
global section so the harness can see which servers HAProxy holds UP.
Nothing else is changed, so what the fleet measures is what is deployed.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import ROOT
from harness.processes import Process, apt_install

CONFIG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
ERRORS = ROOT / "deploy" / "haproxy" / "errors"
BACKEND = "saypi"
_TEMPLATE_LINE = re.compile(r'^(?P<indent>\s*)server\s+saypi1\s+"\$\{SAYPI_BACKEND\}"(?P<rest>.*)$',
                            re.MULTILINE)


class HAProxyUnavailable(Exception):
    pass


@dataclass(frozen=True)
class Backend:
    name: str  # saypi1, saypi2, ...
    address: str  # host:port
    maxconn: int | None = None  # None: the template's


def find_haproxy() -> str | None:
    return shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy")
                                       else None)


def ensure_haproxy(say: Callable[[str], None]) -> str:
    """haproxy's path; installs the Debian package when missing and we are root with apt-get."""
    try:
        return apt_install("haproxy", find_haproxy, say)
    except RuntimeError as exc:
        raise HAProxyUnavailable(f"{exc} (2.6 or later)") from None


def render_config(backends: list[Backend], stats_socket: Path | None = None,
                  template: str | None = None) -> str:
    """deploy/haproxy/haproxy.cfg with its template server line repeated once per backend."""
    text = CONFIG.read_text() if template is None else template
    matches = list(_TEMPLATE_LINE.finditer(text))
    if len(matches) != 1:
        raise ValueError('haproxy.cfg must hold exactly one `server saypi1 "${SAYPI_BACKEND}"` '
                         f'line, the template of a server (found {len(matches)})')
    if not backends:
        raise ValueError("a fleet needs at least one backend")
    match = matches[0]
    lines = []
    for backend in backends:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", backend.name) or any(
                c.isspace() or c in '"#' for c in backend.address):
            raise ValueError(f"unusable server name or address: {backend}")
        rest = match.group("rest")
        if backend.maxconn is not None:
            rest, replaced = re.subn(r"\bmaxconn\s+\d+", f"maxconn {backend.maxconn}", rest)
            if not replaced:
                rest += f" maxconn {backend.maxconn}"
        lines.append(f'{match.group("indent")}server {backend.name} {backend.address}{rest}')
    text = text[:match.start()] + "\n".join(lines) + text[match.end():]
    if stats_socket is not None:
        text, found = re.subn(r"^global\s*$", f"global\n    stats socket {stats_socket} mode 600 "
                              f"level admin", text, count=1, flags=re.MULTILINE)
        if not found:
            raise ValueError("haproxy.cfg has no `global` section")
    return text


def config_env(listen: str, path: str | None = None) -> dict[str, str]:
    """The environment the configuration reads (SAYPI_BACKEND only matters unrendered).
    Pushpin at port 1, where none listens: HAProxy sends the streams to SayPI."""
    return {"PATH": path or os.environ.get("PATH", "/usr/bin:/bin"), "SAYPI_LISTEN": listen,
            "SAYPI_BACKEND": "127.0.0.1:1", "SAYPI_PUSHPIN": "127.0.0.1:1",
            "SAYPI_ERRORS": str(ERRORS)}


def check_config(haproxy: str, config_path: Path, listen: str = "127.0.0.1:1"
                 ) -> subprocess.CompletedProcess:
    """`haproxy -c`: whether HAProxy accepts the configuration."""
    return subprocess.run([haproxy, "-c", "-f", str(config_path)], env=config_env(listen),
                          capture_output=True, text=True, timeout=30)


class HAProxy(Process):
    """A real HAProxy on 127.0.0.1:port in front of `backends`, in its own session."""

    def __init__(self, haproxy: str, backends: list[Backend], port: int, work: Path):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.stats_socket = work / "haproxy.sock"
        self.config_path = work / "haproxy.cfg"
        self.config_path.write_text(render_config(backends, self.stats_socket))
        checked = check_config(haproxy, self.config_path)
        if checked.returncode != 0:
            raise HAProxyUnavailable(f"haproxy -c refused the rendered configuration:\n"
                                     f"{checked.stdout}{checked.stderr}")
        super().__init__("haproxy", [haproxy, "-db", "-f", str(self.config_path)],
                         config_env(f"127.0.0.1:{port}"), work / "haproxy.log")
        deadline = time.monotonic() + 10
        while not self._accepting():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise HAProxyUnavailable(f"haproxy did not start:\n{self.log_tail()}")
            time.sleep(0.05)

    def _accepting(self) -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0 and \
                self.stats_socket.exists()

    def command(self, line: str, timeout: float = 5.0) -> str:
        """One command on the stats socket (the runtime API); its whole answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.stats_socket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")

    def server_states(self) -> dict[str, str]:
        """Each server of the backend and its state as HAProxy sees it (UP, DOWN, ...)."""
        return {row["svname"]: row["status"] for row in self.stats()
                if row["pxname"] == BACKEND and row["svname"] not in ("FRONTEND", "BACKEND")}

    def stats(self) -> list[dict[str, str]]:
        text = self.command("show stat")
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines or not lines[0].startswith("# "):
            return []
        header = lines[0][2:].split(",")
        return [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]

    def wait_state(self, name: str, wanted: str, timeout: float) -> bool:
        """Until HAProxy holds `name` in state `wanted` (UP, DOWN; not "UP 1/2", a transition)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server_states().get(name) == wanted:
                return True
            time.sleep(0.05)
        return False

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
