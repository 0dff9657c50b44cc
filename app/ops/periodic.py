"""Run a few jobs every `interval` seconds on one daemon thread (per worker)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable


class Periodic:
    def __init__(self, name: str, interval: float, jobs: list[Callable[[], object]],
                 logger: logging.Logger):
        self.interval = interval
        self.jobs = jobs
        self.logger = logger
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def run_once(self) -> None:
        for job in self.jobs:
            try:
                job()
            except Exception:  # one failing job must not stop the others
                self.logger.warning("periodic job %s failed", getattr(job, "__name__", job),
                                    exc_info=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.run_once()

    def stop(self) -> None:
        self._stop.set()
