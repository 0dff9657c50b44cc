"""Serving with gunicorn: gthread workers, app and pool built in each worker after fork.

`run.py serve` and `gunicorn -c deploy/gunicorn.conf.py` share these hooks; the master only
forks and tends the metrics directory. Importing this module imports no prometheus_client.
See docs/worker.md ("Serving").
"""

from __future__ import annotations

import signal
import socket
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger as GunicornLogger

WORKER_APP = "app.ops.serve:worker_app()"
Build = Callable[[], tuple[Any, Any]]  # in a worker: its wsgi app, and what it closes at exit


def gunicorn_options(config, logger, build: Build | None = None) -> dict[str, Any]:
    """gunicorn settings derived from Config (plus the lifecycle hooks).

    Every option SayPI relies on is set here, so run(argv, env, stdout)
    decides them all: gunicorn would otherwise take some from the process
    environment by itself (bind from PORT, workers from WEB_CONCURRENCY,
    sendfile from SENDFILE, the proxies it believes from FORWARDED_ALLOW_IPS,
    and a path prefix from SCRIPT_NAME on every request).
    """

    bind = f"[{config.host}]:{config.port}" if ":" in config.host else \
        f"{config.host}:{config.port}"

    def when_ready(server) -> None:
        logger.info("SayPI serving on http://%s", bind)

    return {
        "bind": [bind],
        "workers": config.web_concurrency,
        "worker_class": worker_class_for(config, build),
        "threads": config.threads,
        "graceful_timeout": max(1, round(config.graceful_timeout)),
        "timeout": 30,
        "keepalive": 5,
        "reuse_port": config.reuse_port,
        "preload_app": False,  # the app holds a pool: build it after fork, in each worker
        "accesslog": None,  # SayPI writes its own JSON access line per request
        "errorlog": "-",  # gunicorn writes "-" to stderr
        "loglevel": config.log_level.lower(),
        "control_socket_disable": True,
        "limit_request_line": 8190,
        "limit_request_fields": 100,
        "limit_request_field_size": 8190,
        "sendfile": False,  # SayPI serves no files; gunicorn's property reads SENDFILE otherwise
        # The proxies whose X-Forwarded-Proto gunicorn believes: the ones SayPI trusts.
        "forwarded_allow_ips": ",".join(str(network) for network in config.trusted_proxies),
        "raw_env": ["SCRIPT_NAME="],  # gunicorn strips a SCRIPT_NAME prefix from every path
        "proc_name": "saypi",
        "logger_class": logger_class_for(config.log_format, config.user_secrets),
        "on_starting": on_starting_for(config.prometheus_multiproc_dir),
        "when_ready": when_ready,
        "post_worker_init": post_worker_init,
        "worker_exit": worker_exit,
        "child_exit": child_exit_for(config.prometheus_multiproc_dir),
    }


# --- hooks (gunicorn calls them; the master ones must not build anything) ----------------
def on_starting_for(multiproc_dir: str | None) -> Callable:
    def on_starting(server) -> None:
        """Master, once at start: wipe the metrics of any earlier run."""
        if multiproc_dir:
            from app.ops import metrics as metrics_mod

            metrics_mod.reset_directory(multiproc_dir)

    return on_starting


def post_worker_init(worker) -> None:
    """Readiness turns 503 the moment this worker receives SIGTERM."""
    resources = _resources_of(worker)
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
    resources = _resources_of(worker)
    if resources is not None:
        resources.close()


def child_exit_for(multiproc_dir: str | None) -> Callable:
    def child_exit(server, worker) -> None:
        """Master, when a worker died: drop its live gauges from the merged metrics."""
        if multiproc_dir:
            from app.ops import metrics as metrics_mod

            metrics_mod.mark_process_dead(worker.pid, multiproc_dir)

    return child_exit


def worker_class_for(config, build: Build | None = None) -> type:
    """SayPI's gthread worker (app/ops/worker.py) with this configuration's request limits;
    with `build`, the worker builds its app itself (wsgi app, resources), after fork."""
    from app.ops.worker import SayPIWorker

    attributes: dict[str, Any] = {
        "header_timeout": config.header_timeout,
        "max_header_bytes": config.max_header_bytes,
        "health_threads": config.health_threads,
        "body_timeout": config.body_timeout,
        "max_body_bytes": config.max_body_bytes,
        "queue_timeout": config.db_pool_timeout,
    }
    if build is not None:
        def load_wsgi(self) -> None:
            self.wsgi, self.worker_resources = build()

        attributes["load_wsgi"] = load_wsgi
    return type("SayPIWorker", (SayPIWorker,), attributes)


def listening_at(cfg) -> str:
    """The configured addresses, the way gunicorn names a listening socket."""
    names = []
    for address in cfg.address:
        if isinstance(address, tuple):
            host, port = address[0], address[1]
            names.append(f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}")
        else:
            names.append(f"unix:{address}")
    return ",".join(names)


def logger_class_for(log_format: str, secrets: tuple[str, ...] = ()) -> type:
    """gunicorn's own log lines (boot, worker exits, invalid requests) in SayPI's format,
    on stdout, through the same redaction as every other line: gunicorn quotes a
    malformed header line, `Authorization Bearer usr_...` included, in its warning."""
    from app.ops.logs import RedactionFilter, formatter

    class SayPILogger(GunicornLogger):
        def setup(self, cfg) -> None:
            super().setup(cfg)
            redaction = RedactionFilter(secrets)
            for log in (self.error_log, self.access_log):
                for handler in log.handlers:
                    handler.setFormatter(formatter(log_format))
                    handler.addFilter(redaction)

        def info(self, msg, *args, **kwargs) -> None:
            # With reuse_port every worker binds its own socket and the
            # master holds none, so gunicorn's arbiter would log
            # "Listening at:  (pid)"; name the configured addresses instead.
            if msg.startswith("Listening at:") and args and not args[0]:
                args = (listening_at(self.cfg), *args[1:])
            super().info(msg, *args, **kwargs)

    return SayPILogger


def _resources_of(worker):
    """The Deps this worker process built, whichever way gunicorn was started."""
    resources = getattr(worker.app, "worker_resources", None)
    if resources is None:
        resources = getattr(worker, "worker_resources", None)
    return resources


# --- run.py serve --------------------------------------------------------------------------
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


# --- gunicorn -c deploy/gunicorn.conf.py -------------------------------------------------------
def worker_app():
    """`wsgi_app` for gunicorn's command line, which requires one; SayPI's worker class
    builds the app instead, so only a master asked to preload the app gets here."""
    raise RuntimeError("SayPI builds its app in each worker after fork (it holds a "
                       "connection pool); do not set preload_app")


def cli_config(env: Mapping[str, str], stdout: IO[str]):
    """The Config for `gunicorn -c deploy/gunicorn.conf.py`, ready to serve.

    Reads the same variables as run.py; exits with status 2 and one line per
    problem when they are invalid. Unlike run.py it neither starts an embedded
    PostgreSQL nor migrates (run `python run.py migrate` once per release), so
    DATABASE_URL is required.
    """
    from app.config import Config, ConfigError

    try:
        config = Config.from_env(env, [], stdout=stdout)
    except ConfigError as exc:
        problems = exc.problems
    else:
        problems = [] if config.database_url else [
            "DATABASE_URL: is required under gunicorn (the embedded PostgreSQL is "
            "started only by run.py)"]
    if problems:
        for problem in problems:
            stdout.write(f"config error: {problem}\n")
        stdout.flush()
        raise SystemExit(2)

    return serving_config(config, lambda message: stdout.write(f"warning: {message}\n"))


def serving_config(config, warn: Callable[[str], object]):
    """Fill in what serving needs and the operator left unset: a development token
    secret (generated once under DATA_DIR), a free port for PORT=0, and a fresh
    directory for the workers' metrics."""
    changes: dict[str, Any] = {}
    if not config.user_secrets:
        from app.ops.secrets_store import development_secret

        data_dir = Path(config.data_dir).resolve()
        secret, _created = development_secret(data_dir)
        warn(f"USER_SECRETS is unset: using the development secret in "
             f"{data_dir / 'user_secret'} (set USER_SECRETS in production)")
        changes["user_secrets"] = (secret,)
    if config.port == 0:
        changes["port"] = _free_port(config.host)
    if not config.prometheus_multiproc_dir:
        changes["prometheus_multiproc_dir"] = tempfile.mkdtemp(prefix="saypi-metrics-")
    return config.replace(**changes) if changes else config


def cli_settings(config, stdout: IO[str],
                 build_app: Callable[[Any, Any, str], tuple[Any, Any]]) -> dict[str, Any]:
    """gunicorn settings for deploy/gunicorn.conf.py; each worker calls
    `build_app(config, logger, dsn)` for its (wsgi app, resources).

    Call only after PROMETHEUS_MULTIPROC_DIR is in the environment.
    """
    from app.ops.logs import new_logger

    logger = new_logger(stdout, config.log_level, config.log_format, config.user_secrets)

    def build() -> tuple[Any, Any]:
        return build_app(config, logger, config.database_url)

    return {**gunicorn_options(config, logger, build), "wsgi_app": WORKER_APP}


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
