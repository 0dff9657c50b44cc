"""new_server: one constructor that turns dependencies into the Flask app."""

from __future__ import annotations

import logging

from flask import Flask

from app.middleware import install_middleware
from routes import add_routes


def new_server(config, logger: logging.Logger, lifecycle, health, metrics,
               sample_metrics) -> Flask:
    """The SayPI WSGI app; every dependency comes in as an argument."""
    app = Flask("saypi")
    app.json.sort_keys = False
    add_routes(app, config, logger, lifecycle, health, metrics, sample_metrics)
    install_middleware(app, config, logger, metrics)
    return app
