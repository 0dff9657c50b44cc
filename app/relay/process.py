"""One relay process: its loop, its health and metrics port, and what it closes at exit."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from app.ops import health as health_mod
from app.relay.health import RelayHttp
from app.relay.runner import Relay


@dataclass(frozen=True, slots=True)
class RelayProcess:
    relay: Relay
    health: health_mod.HealthManager
    http: RelayHttp
    health_interval: float
    on_close: Sequence[Callable[[], None]] = ()  # the pool, in that order

    def run(self) -> int:
        """Serve health and metrics, step the tasks until SIGTERM, then close everything."""
        self.health.start(interval=self.health_interval)
        self.http.start()
        try:
            return self.relay.run()
        finally:
            self.http.close()
            self.health.close()
            for close in self.on_close:
                close()
