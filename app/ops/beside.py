"""A process that runs beside the server and ends with it: `make run`'s relay.

Started before gunicorn binds (so it inherits no listening socket), in its own process
group (a terminal's Ctrl+C reaches the server, which then stops it), stopped with SIGTERM
and its grace bound, then SIGKILL.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence


class Beside:
    """One child process, started at once and stopped by `stop()`."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], logger: logging.Logger):
        self.logger = logger
        self.process = subprocess.Popen(list(argv), env=dict(env), start_new_session=True)
        logger.info("started beside the server: %s (pid %d)", " ".join(argv[-1:]),
                    self.process.pid)

    def stop(self, grace_seconds: float) -> int:
        """SIGTERM, up to `grace_seconds` for it to exit, then SIGKILL; its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace_seconds)
            except subprocess.TimeoutExpired:
                self.logger.warning("pid %d still running after %.0f s: killed",
                                    self.process.pid, grace_seconds)
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode
