"""run(argv, env, stdout) decides every serving option: gunicorn's own environment
variables change nothing (issue #13: no hidden inputs)."""

from __future__ import annotations

from pathlib import Path

import httpx

from app.config import Config
from app.platform.serve import gunicorn_options


def test_gunicorn_variables_in_the_process_environment_change_nothing(start_server):
    server = start_server(WEB_CONCURRENCY="2", SCRIPT_NAME="/prefix", SENDFILE="1",
                          FORWARDED_ALLOW_IPS="*", GUNICORN_CMD_ARGS="--workers 5")
    # A SCRIPT_NAME that leaked into gunicorn would refuse every path outside /prefix.
    assert httpx.get(server.url + "/health/live").status_code == 200
    assert httpx.get(server.url + "/animals").status_code == 401  # routed as always
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
    assert len(children.read_text().split()) == 2  # WEB_CONCURRENCY as SayPI read it


def test_every_option_gunicorn_would_read_from_the_environment_is_set():
    import logging

    config = Config.from_env({"TRUSTED_PROXIES": "10.0.0.0/8"}, ["serve"])
    options = gunicorn_options(config, logging.getLogger("test"))
    assert options["bind"] == ["127.0.0.1:8080"]  # else PORT
    assert options["workers"] == config.web_concurrency  # else WEB_CONCURRENCY
    assert options["sendfile"] is False  # else SENDFILE
    assert options["forwarded_allow_ips"] == "10.0.0.0/8"  # else FORWARDED_ALLOW_IPS
    assert options["raw_env"] == ["SCRIPT_NAME="]  # else SCRIPT_NAME, read per request
