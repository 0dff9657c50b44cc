"""Structured logging: JSON lines (python-json-logger) or text, request ids, redaction.

Every record carries its request id (and trace ids), every field is redacted, the libraries'
records share the one handler, and repeats of a failure are summarised. The access line
takes a faster path. See docs/observability.md.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from json.encoder import encode_basestring_ascii as json_ascii_string
from typing import IO

from opentelemetry.trace import get_current_span
from pythonjsonlogger.json import JsonFormatter

from app.http.request_state import STANDARD_METHODS, request_state_or_none

# Attributes every LogRecord has; anything else came in through `extra`.
_RECORD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id"}
# The ones the redaction filter handles first, before it scrubs every other field.
_REDACTED_FIRST = {"msg", "args", "exc_info", "exc_text", "stack_info"}
_SENSITIVE_KEYS = re.compile(r"authorization|token|secret|password|passwd|dsn|cookie|api_key",
                             re.IGNORECASE)
# A SayPI token is `usr_<16 hex>.<base64url MAC>`. Its shape is
# redacted wherever it appears (with or without "Bearer", in a URL, a repr, a
# traceback), also percent-encoded ("%5F", "%2E", "%2D") and with a MAC cut
# short, down to 10 characters (60 bits).
_URL_CHAR = r"(?:[A-Za-z0-9_-]|%2[Dd]|%5[Ff])"
_TOKEN_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[^\s\"',;]+"),
    re.compile(rf"(?i)usr(?:_|%5F)[0-9a-f]{{16}}(?:\.|%2E){_URL_CHAR}{{10,}}"),
    re.compile(r"(postgres(?:ql)?://[^:/@\s]*:)[^@\s]*@"),
)
# Cheap test run first on every string: only text that could hold a token or
# a DSN password pays for the substitutions.
_MAY_HOLD_SECRET = re.compile(r"(?i)bearer|usr(?:_|%5f)|://")
REDACTED = "[REDACTED]"
# Formats tracebacks for redaction exactly as both formatters do.
_EXCEPTION_FORMATTER = logging.Formatter()


class RedactionFilter(logging.Filter):
    """Removes tokens, secrets and passwords from every field of a record: its message,
    traceback, extras, and the standard attributes (`request_id`, logger and thread
    names) too. An extra whose name sounds secret is replaced whole."""

    def __init__(self, secrets: Iterable[str] = ()):
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def scrub(self, text: str) -> str:
        """The text with tokens, DSN passwords and the configured secrets redacted."""
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
            return self.scrub(value)
        if isinstance(value, dict):
            return {k: REDACTED if _SENSITIVE_KEYS.search(str(k)) else self._scrub_value(v)
                    for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._scrub_value(v) for v in value]
        if isinstance(value, datetime.date | datetime.time):
            return value
        # bytes, exceptions, any other object: the formatter would write its str()
        return self.scrub(str(value))

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg = record.getMessage()
            record.args = None
        if isinstance(record.msg, dict):  # python-json-logger merges a dict message
            record.msg = self._scrub_value(record.msg)
        else:
            record.msg = self.scrub(record.msg if isinstance(record.msg, str)
                                     else str(record.msg))
        if record.exc_info and not record.exc_text:
            # Formatted here, redacted, and kept as exc_text, which both formatters
            # write instead of formatting exc_info again.
            record.exc_text = _EXCEPTION_FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        fields = vars(record)
        standard = []
        for key, value in list(fields.items()):
            if key in _REDACTED_FIRST or value is None or isinstance(value, int | float):
                continue
            if key in _RECORD_ATTRS:
                if isinstance(value, str) and key != "request_id":
                    standard.append(value)  # logging's own: checked together, below
                else:
                    fields[key] = self._scrub_value(value)
            elif _SENSITIVE_KEYS.search(key):
                fields[key] = REDACTED
            else:
                fields[key] = self._scrub_value(value)
        if standard and self._may_hold_secret("\n".join(standard)):
            for key, value in list(fields.items()):
                if key in _RECORD_ATTRS and isinstance(value, str) and key not in _REDACTED_FIRST:
                    fields[key] = self.scrub(value)
        return True

    def _may_hold_secret(self, text: str) -> bool:
        return _MAY_HOLD_SECRET.search(text) is not None or \
            any(secret in text for secret in self.secrets)


class RequestIdFilter(logging.Filter):
    """Stamps the current request's id (if any) on the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id") and not hasattr(record, "repeated"):
            state = request_state_or_none()
            if state is not None:
                record.request_id = state.request_id
        return True


class TraceContextFilter(logging.Filter):
    """Stamps the current span's ids (if any) on the record, as `trace_id` and `span_id`
    (lower-case hex, the OpenTelemetry log data model's names), so a log line leads to its
    trace. With tracing off no span is ever current and nothing is added."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "trace_id"):
            context = get_current_span().get_span_context()
            if context.is_valid:
                record.trace_id = f"{context.trace_id:032x}"
                record.span_id = f"{context.span_id:016x}"
        return True


class RepeatFilter(logging.Filter):
    """Rate-limits repeated warnings and errors, on a handler, and counts what it drops.

    Per group (logger, level, template, exception type and place) the first `burst` records of
    each `window` pass, the rest are counted and summarised once the window closes; DEBUG, INFO
    and CRITICAL always pass. Thread-safe; `emit` handles a summary outside the lock.
    See docs/observability.md ("Repeated warnings").
    """

    def __init__(self, emit: Callable[[logging.LogRecord], object] | None = None,
                 burst: int = 5, window: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.emit = emit
        self.burst = burst
        self.window = window
        self.clock = clock
        self._lock = threading.Lock()
        # key -> [window start, records passed, records dropped, last dropped record]
        self._groups: dict[tuple, list] = {}
        self._next_sweep = 0.0
        if hasattr(os, "register_at_fork"):
            # The lock is new in a forked child (gunicorn forks workers from the master,
            # whose logger was built first); the hook holds the filter weakly.
            reset = weakref.WeakMethod(self._reset_after_fork)
            os.register_at_fork(after_in_child=lambda: (method := reset()) and method())

    def _reset_after_fork(self) -> None:
        self._lock = threading.Lock()

    @staticmethod
    def _key(record: logging.LogRecord) -> tuple:
        msg = record.msg
        if not isinstance(msg, str):  # a dict or an exception as the message: by its type
            msg = (type(msg),)
        exc = record.exc_info
        if isinstance(exc, tuple) and exc[0] is not None:
            tb = exc[2]
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            where = (tb.tb_frame.f_code.co_filename, tb.tb_lineno) if tb is not None else None
            return record.name, record.levelno, msg, exc[0], where
        return record.name, record.levelno, msg

    def filter(self, record: logging.LogRecord) -> bool:
        levelno = record.levelno
        if levelno < logging.WARNING or levelno >= logging.CRITICAL \
                or hasattr(record, "repeated"):
            return True
        key = self._key(record)
        now = self.clock()
        due: list[tuple[logging.LogRecord, int]] = []
        with self._lock:
            if now >= self._next_sweep:
                self._sweep(now, due)
            group = self._groups.get(key)
            if group is None or now - group[0] >= self.window:
                if group is not None and group[2]:
                    due.append((group[3], group[2]))
                self._groups[key] = [now, 1, 0, None]
                passed = True
            elif group[1] < self.burst:
                group[1] += 1
                passed = True
            else:
                group[2] += 1
                group[3] = record
                passed = False
        if due:
            self._emit(due)
        return passed

    def flush(self) -> None:
        """Emit the summaries of every window that has closed."""
        due: list[tuple[logging.LogRecord, int]] = []
        with self._lock:
            self._sweep(self.clock(), due)
        if due:
            self._emit(due)

    def _sweep(self, now: float, due: list) -> None:
        """Under the lock: collect closed windows' counts, forget their groups."""
        self._next_sweep = now + self.window
        closed = [key for key, group in self._groups.items() if now - group[0] >= self.window]
        for key in closed:
            group = self._groups.pop(key)
            if group[2]:
                due.append((group[3], group[2]))

    def summary(self, last: logging.LogRecord, count: int) -> logging.LogRecord:
        """The record standing for `count` dropped records, the last of them `last`."""
        return logging.makeLogRecord({
            "name": last.name, "levelno": last.levelno, "levelname": last.levelname,
            "pathname": last.pathname, "lineno": last.lineno, "funcName": last.funcName,
            "msg": f"{last.getMessage()} (repeated {count:,} more times in the last "
                   f"{self.window:.1f} s)",
            "repeated": count,
        })

    def _emit(self, due: list[tuple[logging.LogRecord, int]]) -> None:
        # Outside the lock: getMessage may run any __str__, and emit takes the
        # handler's lock.
        if self.emit is not None:
            for last, count in due:
                self.emit(self.summary(last, count))


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


class _JsonFormatter(JsonFormatter):
    """python-json-logger's formatter, except that a traceback a filter already
    formatted (and redacted) as `exc_text` is written as it is, not formatted
    again from `exc_info`."""

    def format(self, record: logging.LogRecord) -> str:
        exc_info = record.exc_info
        if exc_info and record.exc_text:
            record.exc_info = None
            try:
                return super().format(record)
            finally:
                record.exc_info = exc_info
        return super().format(record)


DATE_FORMAT = "%Y-%m-%dT%H:%M:%S%z"

# The libraries' loggers SayPI's handler carries (besides the root logger, which
# catches any other), each at no more detail than WARNING: psycopg_pool's INFO
# is a line per connection handed out.
LIBRARY_LOGGERS = ("psycopg", "psycopg.pool", "werkzeug")


def formatter(fmt: str) -> logging.Formatter:
    """JSON lines for machines, or a readable line for people."""
    if fmt == "json":
        return _JsonFormatter(
            "{asctime}{levelname}{name}{message}", style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            datefmt=DATE_FORMAT,
        )
    return _TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


class LineHandler(logging.StreamHandler):
    """The stream handler new_logger makes: records as usual, plus lines formatted elsewhere.

    `write_line` writes text that is already one formatted line (the access
    log's) under the same lock as `emit`, so the two never interleave.
    """

    def write_line(self, line: str, flush: bool) -> None:
        self.acquire()  # logging.Handler's lock, the one `emit` holds
        try:
            self.stream.write(line)
            if flush:
                self.stream.flush()
        finally:
            self.release()


def new_logger(stream: IO[str], level: str = "INFO", fmt: str = "json",
               secrets: Iterable[str] = (), name: str = "saypi", *,
               libraries: bool | None = None) -> logging.Logger:
    """A logger writing one line per record to `stream`, with ids, redaction and repeat limits.

    With `libraries` (the default for the process's logger, "saypi") the same handler also
    serves the root logger and LIBRARY_LOGGERS, at `level` or WARNING, whichever is higher,
    keeping other code's root handlers and replacing an earlier one of ours.
    """
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.setLevel(level)
    logger.propagate = False
    handler = LineHandler(stream)
    handler.setFormatter(formatter(fmt))
    # The repeat filter comes first: it needs the message template, which
    # redaction replaces by the formatted message, and a dropped record costs
    # no redaction.
    handler.addFilter(RepeatFilter(handler.handle))
    handler.addFilter(RequestIdFilter())
    handler.addFilter(TraceContextFilter())
    handler.addFilter(RedactionFilter(secrets))
    logger.addHandler(handler)
    if libraries if libraries is not None else name == "saypi":
        library_level = max(logger.level, logging.WARNING)
        root = logging.getLogger()
        for old in [h for h in root.handlers if isinstance(h, LineHandler)]:
            root.removeHandler(old)
        root.addHandler(handler)
        root.setLevel(library_level)
        for library in LIBRARY_LOGGERS:
            library_logger = logging.getLogger(library)
            library_logger.setLevel(library_level)
            library_logger.propagate = True
            for old in [h for h in library_logger.handlers if isinstance(h, LineHandler)]:
                library_logger.removeHandler(old)
    return logger


class AccessLog:
    """The one line logged for every request.

    With JSON logs it is written straight to the stream in the JSON formatter's exact shape
    (client-chosen strings still scrubbed), and flushed at most every FLUSH_SECONDS and by
    `flush()`; otherwise it takes the ordinary logging path. See docs/observability.md.
    """

    FLUSH_SECONDS = 0.2

    def __init__(self, logger: logging.Logger):
        self.logger = logger.getChild("access")
        self.name = self.logger.name
        handler = logger.handlers[0] if len(logger.handlers) == 1 else None
        redaction = [f for f in handler.filters if isinstance(f, RedactionFilter)] \
            if handler is not None else []
        direct = handler if (isinstance(handler, LineHandler)
                             and isinstance(handler.formatter, JsonFormatter)
                             and len(redaction) == 1) else None
        self.direct = direct is not None
        if direct is not None:
            self.handler, self.write_line, self.scrub = direct, direct.write_line, \
                redaction[0].scrub
        self.repeats = [f for f in handler.filters if isinstance(f, RepeatFilter)] \
            if handler is not None else []
        self._second = -1
        self._head = ""
        self._flushed = 0.0

    def write(self, request_id: str, method: str, route: str, status: int, duration_ms: float,
              remote_addr: str, size: int, user_id: str | None = None,
              client_request_id: bool = True, *, trace_id: str | None = None,
              span_id: str | None = None) -> None:
        """Log one request. `client_request_id=False` says the id is one SayPI made;
        `trace_id` and `span_id` (hex, with tracing on) are the request's server span."""
        if not self.logger.isEnabledFor(logging.INFO):
            return
        if not self.direct:
            fields = {"request_id": request_id, "method": method, "route": route,
                      "status": status, "duration_ms": duration_ms, "remote_addr": remote_addr,
                      "bytes": size}
            if user_id is not None:
                fields["user_id"] = user_id
            if trace_id is not None:
                fields["trace_id"], fields["span_id"] = trace_id, span_id
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
        if user_id is not None:
            line += f', "user_id": {json_ascii_string(user_id)}'
        if trace_id is not None:  # our own hex: no escaping needed
            line += f', "trace_id": "{trace_id}", "span_id": "{span_id}"'
        line += "}\n"
        flush = now - self._flushed >= self.FLUSH_SECONDS
        if flush:
            self._flushed = now
        self.write_line(line, flush)

    def flush(self) -> None:
        """Write out buffered access lines, and the repeat filter's due summaries."""
        for repeats in self.repeats:
            repeats.flush()
        if self.direct:
            self.handler.flush()
