"""Serving with gunicorn: gthread workers, app and pool built in each worker after fork.

`GunicornApp` embeds gunicorn for `run.py serve`. The hook functions here are
shared with deploy/gunicorn.conf.py, for operators who run `gunicorn` directly.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger as GunicornLogger

from app import metrics as metrics_mod


def gunicorn_options(config, stdout) -> dict[str, Any]:
    """gunicorn settings derived from Config (plus the lifecycle hooks)."""

    bind = f"[{config.host}]:{config.port}" if ":" in config.host else \
        f"{config.host}:{config.port}"

    def when_ready(server) -> None:
        stdout.write(f"SayPI serving on http://{bind}\n")
        stdout.flush()

    return {
        "bind": [bind],
        "workers": config.web_concurrency,
        "worker_class": "gthread",
        "threads": config.threads,
        "graceful_timeout": max(1, round(config.graceful_timeout)),
        "timeout": 30,
        "keepalive": 5,
        "reuse_port": config.reuse_port,
        "accesslog": None,  # SayPI writes its own JSON access line per request
        "errorlog": "-",  # gunicorn writes "-" to stderr
        "loglevel": config.log_level.lower(),
        "control_socket_disable": True,
        "limit_request_line": 8190,
        "limit_request_fields": 100,
        "limit_request_field_size": 8190,
        "proc_name": "saypi",
        "logger_class": logger_class_for(config.log_format),
        "when_ready": when_ready,
        "post_worker_init": post_worker_init,
        "worker_exit": worker_exit,
        "child_exit": child_exit_for(config.prometheus_multiproc_dir),
    }


def post_worker_init(worker) -> None:
    """Readiness turns 503 the moment this worker receives SIGTERM."""
    resources = getattr(worker.app, "worker_resources", None)
    if resources is None:
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        resources.lifecycle.begin_shutdown()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)


def worker_exit(server, worker) -> None:
    """Close the worker's pool and threads as it exits."""
    resources = getattr(worker.app, "worker_resources", None)
    if resources is not None:
        resources.close()


def child_exit_for(multiproc_dir: str | None) -> Callable:
    def child_exit(server, worker) -> None:
        if multiproc_dir:
            metrics_mod.mark_process_dead(worker.pid, multiproc_dir)

    return child_exit


def logger_class_for(log_format: str) -> type:
    """gunicorn's own log lines (boot, worker exits) in SayPI's format, on stdout."""
    from app.logs import formatter

    class SayPILogger(GunicornLogger):
        def setup(self, cfg) -> None:
            super().setup(cfg)
            for handler in self.error_log.handlers:
                handler.setFormatter(formatter(log_format))

    return SayPILogger


class GunicornApp(BaseApplication):
    """gunicorn, embedded: `build` runs in each worker and returns (wsgi app, resources)."""

    def __init__(self, options: dict[str, Any], build: Callable[[], tuple[Any, Any]]):
        self.options = options
        self.build = build
        self.worker_resources = None
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        app, self.worker_resources = self.build()
        return app
