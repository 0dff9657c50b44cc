"""new_server: one constructor that turns dependencies into the Flask app."""

from __future__ import annotations

import logging

from flask import Flask

from app.cors import install_cors
from app.middleware import install_middleware
from routes import add_routes


def new_server(config, logger: logging.Logger, access_log, lifecycle, health, metrics,
               sample_metrics, auth, idempotent, presence, renderer, users, moods, conversations,
               lines, db) -> Flask:
    """The SayPI WSGI app; every dependency comes in as an argument."""
    app = Flask("saypi")
    add_routes(app, config, logger, lifecycle, health, metrics, sample_metrics,
               auth, idempotent, presence, renderer, users, moods, conversations, lines, db)
    install_middleware(app, config, logger, access_log, metrics)
    install_cors(app, config.cors_origins)  # after, so preflights get a request id and a log line
    return app
