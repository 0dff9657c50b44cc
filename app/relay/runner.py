"""The relay's loop: each task on a thread of its own, stepped until SIGTERM.

A task does one bounded piece of work per `step()`; idle tasks wait
RELAY_POLL_SECONDS; failures back off; on SIGTERM the steps under way get
RELAY_GRACE_SECONDS to finish. See docs/relay.md.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Sequence
from typing import Protocol

MAX_BACKOFF_SECONDS = 30.0


class Task(Protocol):
    name: str

    def step(self) -> bool:
        """Do one bounded piece of work; True when there may be more right away."""
        ...

    def close(self) -> None:
        """Release what the task holds (clients, connections); called once, at exit."""
        ...


class Relay:
    """Steps its tasks, each on its own thread, until stopped."""

    def __init__(self, tasks: Sequence[Task], logger: logging.Logger, idle_seconds: float,
                 grace_seconds: float):
        self.tasks = tuple(tasks)
        self.logger = logger
        self.idle_seconds = idle_seconds
        self.grace_seconds = grace_seconds
        self.stopping = threading.Event()
        self._signalled: list[bool] = []  # SIGTERM or SIGINT arrived
        self._wakes = {task.name: threading.Event() for task in self.tasks}
        # When each task last finished a step (monotonic), for the relay's health.
        self.last_step: dict[str, float] = {task.name: time.monotonic() for task in self.tasks}
        self.failures: dict[str, int] = {task.name: 0 for task in self.tasks}
        self.steps: dict[str, int] = {task.name: 0 for task in self.tasks}

    def wake(self, name: str) -> None:
        """Step task `name` now if it is waiting."""
        self._wakes[name].set()

    def stop(self) -> None:
        self.stopping.set()
        for wake in self._wakes.values():
            wake.set()

    def run(self, install_signals: bool = True) -> int:
        """Step every task until stopped; 0 once every step under way has finished."""
        if install_signals:
            # The handler only notes the signal: one taking the events' locks could run inside
            # a frame of the main thread that holds one (a second signal inside the first
            # handler's Event.set did), and wait for it forever.
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: self._signalled.append(True))
        threads = [threading.Thread(target=self._loop, args=(task,), name=f"relay-{task.name}",
                                    daemon=True) for task in self.tasks]
        for thread in threads:
            thread.start()
        self.logger.info("relay running: %s", ", ".join(t.name for t in self.tasks) or "no tasks")
        while not (self.stopping.is_set() or self._signalled):
            time.sleep(0.1)
        self.stop()
        self.logger.info("relay stopping: finishing the steps under way (at most %.0f s)",
                         self.grace_seconds)
        deadline = time.monotonic() + self.grace_seconds
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        unfinished = [t.name for t in threads if t.is_alive()]
        for task in self.tasks:
            try:
                task.close()
            except Exception:
                self.logger.warning("closing task %s failed", task.name, exc_info=True)
        if unfinished:
            self.logger.warning("relay stopped with steps unfinished: %s (they are redone)",
                                ", ".join(unfinished))
            return 1
        self.logger.info("relay stopped")
        return 0

    def _loop(self, task: Task) -> None:
        wake, backoff = self._wakes[task.name], 0.0
        while not self.stopping.is_set():
            try:
                busy = task.step()
                backoff = 0.0
            except Exception:
                self.failures[task.name] += 1
                backoff = min(MAX_BACKOFF_SECONDS, max(self.idle_seconds, backoff * 2 or 0.5))
                self.logger.warning("relay task %s failed; again in %.1f s", task.name,
                                    backoff, exc_info=True)
                busy = False
            self.last_step[task.name] = time.monotonic()
            self.steps[task.name] += 1
            if not busy:
                wake.wait(backoff or self.idle_seconds)
                wake.clear()
