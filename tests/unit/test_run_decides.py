"""run() sets every option gunicorn would otherwise read from its own environment variables."""

from __future__ import annotations

from app.config import Config
from app.ops.serve import gunicorn_options


def test_every_option_gunicorn_would_read_from_the_environment_is_set():
    import logging

    config = Config.from_env({"TRUSTED_PROXIES": "10.0.0.0/8"}, ["serve"])
    options = gunicorn_options(config, logging.getLogger("test"))
    assert options["bind"] == ["127.0.0.1:8080"]  # else PORT
    assert options["workers"] == config.web_concurrency  # else WEB_CONCURRENCY
    assert options["sendfile"] is False  # else SENDFILE
    assert options["forwarded_allow_ips"] == "10.0.0.0/8"  # else FORWARDED_ALLOW_IPS
    assert options["raw_env"] == ["SCRIPT_NAME="]  # else SCRIPT_NAME, read per request
