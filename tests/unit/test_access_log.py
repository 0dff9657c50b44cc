"""The access line: written straight to the stream, shaped exactly as the JSON formatter's."""

from __future__ import annotations

import io
import json
import logging

from app.ops.logs import AccessLog, new_logger

FIELDS = {"request_id": "abc.DEF-1_2", "method": "GET", "route": "/conversations/<id>",
          "status": 200, "duration_ms": 1.25, "remote_addr": "::1", "bytes": 5120,
          "user_id": "usr_0123456789abcdef"}
VALUES = tuple(FIELDS.values())
TOKEN = "usr_0123456789abcdef.c2VjcmV0LXRva2VuLXZhbHVlLXh5eg"


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_direct_line_is_the_formatters_line(tmp_path):
    out = io.StringIO()
    logger = new_logger(out, "INFO", "json", name="access-shape")
    access = AccessLog(logger)
    assert access.direct
    odd = {**FIELDS, "request_id": "é\"\\\u2028", "method": "BREW", "route": "unmatched",
           "duration_ms": 0.1 + 0.2, "status": 404}
    for fields in (FIELDS, odd, {k: v for k, v in FIELDS.items() if k != "user_id"}):
        out.seek(0)
        out.truncate()
        access.write(*fields.values())
        logger.getChild("access").info("request", extra=dict(fields))  # the logging path
        direct, formatted = out.getvalue().splitlines()
        assert list(json.loads(direct)) == list(json.loads(formatted))  # same keys, same order
        assert direct.replace(json.loads(direct)["time"], "T") == \
            formatted.replace(json.loads(formatted)["time"], "T")


def test_trace_ids_are_the_formatters_fields_too():
    """With tracing on the line ends with the server span's ids, as the formatter writes
    them (and as every other record of the request gets them from the current span)."""
    out = io.StringIO()
    logger = new_logger(out, "INFO", "json", name="access-trace")
    access = AccessLog(logger)
    ids = {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"}
    for fields in (FIELDS, {k: v for k, v in FIELDS.items() if k != "user_id"}):
        out.seek(0)
        out.truncate()
        access.write(*fields.values(), **ids)
        logger.getChild("access").info("request", extra={**fields, **ids})
        direct, formatted = out.getvalue().splitlines()
        assert list(json.loads(direct)) == list(json.loads(formatted))
        assert json.loads(direct)["trace_id"] == ids["trace_id"]
        assert direct.replace(json.loads(direct)["time"], "T") == \
            formatted.replace(json.loads(formatted)["time"], "T")


def test_client_chosen_strings_are_redacted_and_levels_respected():
    out = io.StringIO()
    logger = new_logger(out, "INFO", "json", secrets=["signing-secret"], name="access-redact")
    access = AccessLog(logger)
    access.write(*{**FIELDS, "request_id": TOKEN, "method": "signing-secret"}.values())
    assert TOKEN not in out.getvalue() and "signing-secret" not in out.getvalue()
    assert _lines(out.getvalue())[0]["request_id"] == "[REDACTED]"
    quiet = new_logger(io.StringIO(), "WARNING", "json", name="access-quiet")
    AccessLog(quiet).write(*VALUES)
    assert quiet.handlers[0].stream.getvalue() == ""


def test_text_logs_take_the_logging_path():
    out = io.StringIO()
    access = AccessLog(new_logger(out, "INFO", "text", name="access-text"))
    assert not access.direct
    access.write(*VALUES)
    assert "access-text.access: request" in out.getvalue() and "status=200" in out.getvalue()


def test_lines_are_flushed_by_time_or_by_flush(tmp_path):
    path = tmp_path / "log"
    with path.open("w") as stream:
        access = AccessLog(new_logger(stream, "INFO", "json", name="access-flush"))
        access.write(*VALUES)  # the first line flushes
        access.write(*VALUES)  # within FLUSH_SECONDS: buffered
        assert len(path.read_text().splitlines()) == 1
        access.flush()
        assert len(path.read_text().splitlines()) == 2
        logging.getLogger("access-flush").warning("any other record")  # flushes at once
        assert len(path.read_text().splitlines()) == 3
