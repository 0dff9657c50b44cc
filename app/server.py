"""new_server: one constructor that turns dependencies into the Flask app."""

from __future__ import annotations

import logging

from flask import Flask
from flask.sessions import NullSession, SessionInterface

from app.config import Config
from app.deps import Deps, build_deps
from app.http.cors import install_cors
from app.http.envelope import install_middleware
from app.http.routing import register
from routes import routes


def new_server(deps: Deps) -> Flask:
    """The SayPI WSGI app, made of one worker's dependencies and nothing else."""
    app = Flask("saypi")
    app.session_interface = NoSessions()
    register(app, routes(deps), deps.auth, deps.idempotency)
    install_middleware(app, deps.config, deps.logger, deps.access_log, deps.metrics,
                       deps.tracing)
    install_cors(app, deps.config.cors_origins)  # after: preflights get a request id and a log
    return app


def build_worker_app(config: Config, logger: logging.Logger, dsn: str) -> tuple[Flask, Deps]:
    """This worker's app and the Deps it must close at exit (gunicorn's `load`)."""
    deps = build_deps(config, logger, dsn)
    app = new_server(deps)
    deps.start()
    return app, deps


class NoSessions(SessionInterface):
    """SayPI authenticates with bearer tokens and keeps no cookie session.

    Flask opens a session for every request; its default interface builds a
    fresh null session each time when there is no secret key. One shared
    NullSession, which refuses every write, does the same for nothing.
    """

    _none = NullSession()

    def open_session(self, app, request):
        return self._none

    def save_session(self, app, session, response) -> None:
        return None
