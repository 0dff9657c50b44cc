"""new_server: one constructor that turns dependencies into the Flask app."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from flask import Flask
from flask.sessions import NullSession, SessionInterface

from app.http.cors import install_cors
from app.http.envelope import install_middleware
from app.http.routing import register
from app.repo.slow_queries import SlowQueryRepository
from routes import routes


def new_server(config, logger: logging.Logger, access_log, lifecycle, health, metrics,
               sample_metrics, auth, idempotent, presence, renderer, users, moods, conversations,
               lines, db) -> Flask:
    """The SayPI WSGI app; every dependency comes in as an argument."""
    # A stand-in for app/deps.py's Deps, with its field names, until that lands.
    deps = SimpleNamespace(
        config=config, logger=logger, lifecycle=lifecycle, health=health, metrics=metrics,
        sample_metrics=sample_metrics, auth=auth, idempotency=idempotent, presence=presence,
        renderer=renderer, users=users, moods=moods, conversations=conversations, lines=lines,
        slow_queries=SlowQueryRepository(db))
    app = Flask("saypi")
    app.session_interface = NoSessions()
    register(app, routes(deps), deps.auth, deps.idempotency)
    install_middleware(app, config, logger, access_log, metrics)
    install_cors(app, config.cors_origins)  # after, so preflights get a request id and a log line
    return app


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
