"""Structured logging: JSON lines (python-json-logger) or text, request ids, redaction.

Every record logged while a request is served carries that request's id. A
redaction filter runs on every record before it is formatted, so no bearer
token, Authorization header, DSN password or configured secret can reach the
output, whatever a caller passes in `extra`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from json.encoder import encode_basestring_ascii as json_ascii_string
from typing import IO

from pythonjsonlogger.json import JsonFormatter

from app.request_state import STANDARD_METHODS, request_state_or_none

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
        if not hasattr(record, "request_id"):
            state = request_state_or_none()
            if state is not None:
                record.request_id = state.request_id
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


DATE_FORMAT = "%Y-%m-%dT%H:%M:%S%z"


def formatter(fmt: str) -> logging.Formatter:
    """JSON lines for machines, or a readable line for people."""
    if fmt == "json":
        return JsonFormatter(
            "{asctime}{levelname}{name}{message}", style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            datefmt=DATE_FORMAT,
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


class AccessLog:
    """The one line logged for every request.

    With JSON logs the line is written straight to the handler's stream,
    under the handler's lock, in exactly the shape the JSON formatter gives
    (python-json-logger's default separators, ASCII escaping; kept equal by
    tests/test_access_log.py): a LogRecord, two filters and python-json-logger
    cost about 130 us a line, and even json.dumps of the fields costs four
    times this f-string, while every field here is known in advance. Strings
    a client chose (its own request id, an unusual method) still go through
    the redaction filter's scrub, so a token sent as a request id is redacted
    as anywhere else. Text logs, or a logger not made by new_logger, take
    the ordinary logging path.

    Access lines are flushed at most every FLUSH_SECONDS while requests come
    in, and by `flush()`, which the worker calls every second and when it
    exits: a flush per request is a system call that hands the GIL to
    another thread, measured at 20-40 us a request. Any other record
    flushes the stream, and the access lines before it, at once.
    """

    FLUSH_SECONDS = 0.2

    def __init__(self, logger: logging.Logger):
        self.logger = logger.getChild("access")
        self.name = self.logger.name
        handler = logger.handlers[0] if len(logger.handlers) == 1 else None
        redaction = [f for f in handler.filters if isinstance(f, RedactionFilter)] \
            if handler is not None else []
        self.direct = (isinstance(handler, logging.StreamHandler)
                       and isinstance(handler.formatter, JsonFormatter) and len(redaction) == 1)
        if self.direct:
            self.stream, self.lock, self.scrub = handler.stream, handler.lock, redaction[0]._scrub
        self._second = -1
        self._head = ""
        self._flushed = 0.0

    def write(self, request_id: str, method: str, route: str, status: int, duration_ms: float,
              remote_addr: str, size: int, user_id: str | None = None,
              client_request_id: bool = True) -> None:
        """Log one request. `client_request_id=False` says the id is one SayPI made."""
        if not self.logger.isEnabledFor(logging.INFO):
            return
        if not self.direct:
            fields = {"request_id": request_id, "method": method, "route": route,
                      "status": status, "duration_ms": duration_ms, "remote_addr": remote_addr,
                      "bytes": size}
            if user_id is not None:
                fields["user_id"] = user_id
            self.logger.info("request", extra=fields)
            return
        if client_request_id:
            request_id = self.scrub(request_id)
        if method not in STANDARD_METHODS:
            method = self.scrub(method)
        now = time.time()
        second = int(now)
        if second != self._second:  # the formatter's timestamp has whole seconds
            stamp = time.strftime(DATE_FORMAT, time.localtime(second))
            self._head = (f'{{"time": {json_ascii_string(stamp)}, "level": "INFO", '
                          f'"logger": {json_ascii_string(self.name)}, "message": "request", ')
            self._second = second
        line = (f'{self._head}"request_id": {json_ascii_string(request_id)}, '
                f'"method": {json_ascii_string(method)}, "route": {json_ascii_string(route)}, '
                f'"status": {status:d}, "duration_ms": {duration_ms!r}, '
                f'"remote_addr": {json_ascii_string(remote_addr)}, "bytes": {size:d}')
        line += f', "user_id": {json_ascii_string(user_id)}}}\n' if user_id is not None \
            else "}\n"
        with self.lock:
            self.stream.write(line)
            if now - self._flushed >= self.FLUSH_SECONDS:
                self._flushed = now
                self.stream.flush()

    def flush(self) -> None:
        if self.direct:
            with self.lock:
                self.stream.flush()
