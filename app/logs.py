"""Structured logging: JSON lines (python-json-logger) or text, request ids, redaction.

Every record logged while a request is served carries that request's id. A
redaction filter runs on every record before it is formatted, so no bearer
token, Authorization header, DSN password or configured secret can reach the
output, whatever a caller passes in `extra`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import IO

from flask import g, has_request_context
from pythonjsonlogger.json import JsonFormatter

# Attributes every LogRecord has; anything else came in through `extra`.
_RECORD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id"}
_SENSITIVE_KEYS = re.compile(r"authorization|token|secret|password|passwd|dsn|cookie|api_key",
                             re.IGNORECASE)
_TOKEN_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[^\s\"',;]+"),
    re.compile(r"usr_[0-9a-f]{16}\.[A-Za-z0-9_-]{10,}"),
    re.compile(r"(postgres(?:ql)?://[^:/@\s]*:)[^@\s]*@"),
)
# Cheap test run first on every string: only text that could hold a token or
# a DSN password pays for the substitutions.
_MAY_HOLD_SECRET = re.compile(r"(?i)bearer|usr_|://")
REDACTED = "[REDACTED]"


class RedactionFilter(logging.Filter):
    """Removes tokens, secrets and passwords from a record's message and extras."""

    def __init__(self, secrets: Iterable[str] = ()):
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def _scrub(self, text: str) -> str:
        if _MAY_HOLD_SECRET.search(text) is not None:
            for pattern in _TOKEN_PATTERNS:
                text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + REDACTED,
                                   text)
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def _scrub_value(self, value):
        if value is None or isinstance(value, int | float):
            return value
        if isinstance(value, str):
            return self._scrub(value)
        if isinstance(value, dict):
            return {k: REDACTED if _SENSITIVE_KEYS.search(str(k)) else self._scrub_value(v)
                    for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._scrub_value(v) for v in value]
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg = record.getMessage()
            record.args = None
        if isinstance(record.msg, str):
            record.msg = self._scrub(record.msg)
        for key in list(vars(record)):
            if key in _RECORD_ATTRS:
                continue
            if _SENSITIVE_KEYS.search(key):
                setattr(record, key, REDACTED)
            else:
                setattr(record, key, self._scrub_value(getattr(record, key)))
        return True


class RequestIdFilter(logging.Filter):
    """Stamps the current request's id (if any) on the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id") and has_request_context():
            request_id = g.get("request_id")
            if request_id:
                record.request_id = request_id
        return True


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS}
        request_id = getattr(record, "request_id", None)
        if request_id:
            line += f" request_id={request_id}"
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


def formatter(fmt: str) -> logging.Formatter:
    """JSON lines for machines, or a readable line for people."""
    if fmt == "json":
        return JsonFormatter(
            "{asctime}{levelname}{name}{message}", style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            datefmt="%Y-%m-%dT%H:%M:%S%z",
        )
    return _TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def new_logger(stream: IO[str], level: str = "INFO", fmt: str = "json",
               secrets: Iterable[str] = (), name: str = "saypi") -> logging.Logger:
    """A logger writing one line per record to `stream`, with ids and redaction."""
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.setLevel(level)
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(fmt))
    handler.addFilter(RequestIdFilter())
    handler.addFilter(RedactionFilter(secrets))
    logger.addHandler(handler)
    return logger
