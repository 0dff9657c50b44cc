"""new_server: one constructor that turns dependencies into the Flask app."""

from __future__ import annotations

import logging

from flask import Flask
from flask.sessions import NullSession, SessionInterface

from app.http.cors import install_cors
from app.http.envelope import install_middleware
from routes import add_routes


def new_server(config, logger: logging.Logger, access_log, lifecycle, health, metrics,
               sample_metrics, auth, idempotent, presence, renderer, users, moods, conversations,
               lines, db) -> Flask:
    """The SayPI WSGI app; every dependency comes in as an argument."""
    app = Flask("saypi")
    app.session_interface = NoSessions()
    add_routes(app, config, logger, lifecycle, health, metrics, sample_metrics,
               auth, idempotent, presence, renderer, users, moods, conversations, lines, db)
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
