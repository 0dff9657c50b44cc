"""run()'s configuration without serving: --help lists every setting, invalid settings exit 2
naming every problem, flags beat the environment, production needs its secrets; and the
log redaction filter.
"""

from __future__ import annotations

import json

from app.config import SETTINGS
from tests.conftest import run_inline


# --- configuration -------------------------------------------------------------------
def test_help_lists_every_setting_with_its_variable():
    code, out = run_inline(["--help"], {})
    assert code == 0
    for setting in SETTINGS:
        assert setting.env in out, setting.env
        assert setting.flag in out


def test_invalid_config_exits_2_and_names_every_problem():
    env = {"PORT": "eighty", "LOG_LEVEL": "loud", "DB_POOL_MIN": "9", "DB_POOL_MAX": "3",
           "THREADS": "-1", "LOG_FORMAT": "xml"}
    code, out = run_inline(["serve"], env)
    assert code == 2
    lines = [line for line in out.splitlines() if line.startswith("config error:")]
    for name in ("PORT", "LOG_LEVEL", "DB_POOL_MIN", "THREADS", "LOG_FORMAT"):
        assert any(name in line for line in lines), (name, out)
    assert len(lines) == 5


def test_flags_override_environment():
    code, out = run_inline(["--port", "nope"], {"PORT": "8080"})
    assert code == 2
    assert "--port" in out


def test_production_requires_database_url_and_secrets():
    code, out = run_inline(["serve"], {"APP_ENV": "production"})
    assert code == 2
    assert "DATABASE_URL" in out and "USER_SECRETS" in out


def test_redaction_filter_scrubs_extras_and_messages():
    import io
    import logging

    from app.ops.logs import new_logger

    out = io.StringIO()
    logger = new_logger(out, "INFO", "json", secrets=["super-secret-signing-key"],
                        name="redaction-test")
    logger.info("header was Bearer abc.def and key super-secret-signing-key",
                extra={"authorization": "Bearer xyz", "headers": {"Cookie": "c=1"},
                       "dsn": "postgresql://u:pw@h/db", "note": "postgresql://u:pw@h/db"})
    logger.removeHandler(logger.handlers[0])
    line = json.loads(out.getvalue())
    text = json.dumps(line)
    for leaked in ("abc.def", "super-secret-signing-key", "xyz", "c=1", ":pw@"):
        assert leaked not in text, leaked
    assert logging.getLogger("redaction-test").propagate is False
