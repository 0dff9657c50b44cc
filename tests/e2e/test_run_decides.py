"""run(argv, env, stdout) decides every serving option: gunicorn's own environment
variables change nothing (issue #13: no hidden inputs)."""

from __future__ import annotations

from pathlib import Path

import httpx


def test_gunicorn_variables_in_the_process_environment_change_nothing(start_server):
    server = start_server(WEB_CONCURRENCY="2", SCRIPT_NAME="/prefix", SENDFILE="1",
                          FORWARDED_ALLOW_IPS="*", GUNICORN_CMD_ARGS="--workers 5")
    # A SCRIPT_NAME that leaked into gunicorn would refuse every path outside /prefix.
    assert httpx.get(server.url + "/health/live").status_code == 200
    assert httpx.get(server.url + "/animals").status_code == 401  # routed as always
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
    assert len(children.read_text().split()) == 2  # WEB_CONCURRENCY as SayPI read it
