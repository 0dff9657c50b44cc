"""Logging without I/O: redaction of every token shape, and the repeat limits of
app/ops/logs.py on a fake clock.
"""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from app.http.request_state import RequestState, enter, leave
from app.ops.logs import REDACTED, AccessLog, RedactionFilter, RepeatFilter, new_logger
from tests.conftest import run_threads

MAC = "c2VjcmV0LXRva2VuLXZhbHVlLXh5eg"
TOKEN = f"usr_0123456789abcdef.{MAC}"
# Enough of the MAC that seeing it means a token leaked (the filter's threshold is 10).
LEAK = MAC[:10]


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- redaction -----------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    f"Authorization Bearer {TOKEN}",            # no colon
    f"Authorization: {TOKEN}",                  # no "Bearer"
    f"authorization={TOKEN}&next=1",
    f"bearer\t{TOKEN}", f"Bearer\u00a0{TOKEN}", f"Bearer:{TOKEN}",
    f"({TOKEN})", f"[{TOKEN}]", f"<{TOKEN}>", f"'{TOKEN}'", f'"{TOKEN}"', f"|{TOKEN}|",
    f"x{TOKEN}y", f"\n{TOKEN}\n", f"\x00{TOKEN}\x00", f"token={TOKEN};",
    f"{TOKEN[:21 + 10]} (MAC cut to 10 characters)",
    f"{TOKEN[:21 + 25]}…",
    TOKEN.upper(),
    "usr%5F0123456789abcdef%2E" + MAC,          # percent-encoded, as in a query string
    "usr_0123456789abcdef%2e" + MAC[:5] + "%2D" + MAC[5:],
    f"b'{TOKEN}'",
])
def test_every_shape_of_a_token_is_redacted_in_messages(text):
    out = io.StringIO()
    logger = new_logger(out, "INFO", "json", name="logs-shapes")
    logger.warning(text)
    logger.warning("arg: %s", text)
    logger.warning("extra", extra={"note": text, "nested": {"list": [text, (text,)]}})
    assert LEAK not in out.getvalue() and LEAK.upper() not in out.getvalue()
    assert REDACTED in _lines(out.getvalue())[0]["message"]


def test_tokens_in_exceptions_bytes_and_objects_are_redacted():
    out = io.StringIO()
    logger = new_logger(out, "INFO", "json", name="logs-objects")
    try:
        raise ValueError(f"bad header {TOKEN}")
    except ValueError as exc:
        logger.exception("failed")  # the traceback holds the token
        logger.warning(exc)  # an exception as the message itself
        logger.warning("extras", extra={"raw": TOKEN.encode(), "error": exc,
                                        "items": {TOKEN.encode()}})
    logger.warning("stack", stack_info=True, extra={"where": f"/x?t={TOKEN}"})
    lines = _lines(out.getvalue())
    assert len(lines) == 4  # the traceback is inside the JSON object
    assert "Traceback (most recent call last)" in lines[0]["exc_info"]
    assert "ValueError: bad header [REDACTED]" in lines[0]["exc_info"]
    assert LEAK not in out.getvalue()


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_every_field_of_a_record_is_redacted_the_request_id_included(fmt):
    """A request id is a field like any other: the one stamped from the request being
    served, and one passed in `extra`."""
    out = io.StringIO()
    logger = new_logger(out, "INFO", fmt, name=f"logs-fields-{fmt}")
    state = RequestState({}, f"req-{TOKEN}", "127.0.0.1")
    entered = enter(state)
    try:
        logger.warning("database unavailable: %s", "connection refused")
    finally:
        leave(entered)
    logger.warning("explicit", extra={"request_id": TOKEN})
    assert "database unavailable: connection refused" in out.getvalue()
    assert LEAK not in out.getvalue(), out.getvalue()
    assert out.getvalue().count(REDACTED) == 2
    record = logging.makeLogRecord({"msg": "m", "request_id": TOKEN, "threadName": TOKEN,
                                    "name": f"saypi.{TOKEN}", "funcName": TOKEN})
    assert RedactionFilter().filter(record)
    assert all(LEAK not in str(value) for value in vars(record).values()), vars(record)


def test_redaction_filter_leaves_ordinary_records_alone():
    record = logging.makeLogRecord({"msg": "pool %r has %d connections", "args": ("p", 3),
                                    "count": 3, "ratio": 0.5})
    assert RedactionFilter(["sekrit"]).filter(record)
    assert record.getMessage() == "pool 'p' has 3 connections"
    assert record.count == 3 and record.ratio == 0.5


# --- the repeat filter ---------------------------------------------------------------------
def _record(msg="database unavailable: %s", level=logging.WARNING, name="saypi", args=("x",),
            exc_info=None) -> logging.LogRecord:
    return logging.makeLogRecord({"name": name, "msg": msg, "args": args, "levelno": level,
                                  "levelname": logging.getLevelName(level),
                                  "exc_info": exc_info})


def test_repeats_pass_a_burst_then_one_summary_per_window():
    clock, emitted = FakeClock(), []
    repeats = RepeatFilter(emitted.append, burst=3, window=1.0, clock=clock)
    passed = [repeats.filter(_record(args=(i,))) for i in range(1000)]
    assert passed == [True] * 3 + [False] * 997 and emitted == []
    clock.now += 0.5
    assert not repeats.filter(_record(args=("late",)))
    clock.now += 0.6  # the window has closed: the next record brings the summary first
    assert repeats.filter(_record(args=("next",)))
    [summary] = emitted
    assert summary.repeated == 998 and summary.levelno == logging.WARNING
    assert summary.name == "saypi"
    assert summary.getMessage() == ("database unavailable: late (repeated 998 more times in "
                                    "the last 1.0 s)")
    assert repeats.filter(summary)  # a summary itself always passes


def test_flush_emits_closed_windows_only_and_forgets_quiet_groups():
    clock, emitted = FakeClock(), []
    repeats = RepeatFilter(emitted.append, burst=1, window=1.0, clock=clock)
    for _ in range(5):
        repeats.filter(_record())
    repeats.filter(_record(msg="other %s"))  # one record: nothing to summarise
    repeats.flush()
    assert emitted == []  # the window is still open
    clock.now += 1.0
    repeats.flush()
    assert [r.repeated for r in emitted] == [4]
    repeats.flush()
    assert len(emitted) == 1 and repeats._groups == {}
    assert repeats.filter(_record())  # a new window


def test_groups_are_per_logger_level_template_and_exception():
    repeats = RepeatFilter(None, burst=1, window=1.0, clock=FakeClock())
    assert repeats.filter(_record())
    assert not repeats.filter(_record(args=("different argument, same template",)))
    assert repeats.filter(_record(msg="another template %s"))
    assert repeats.filter(_record(level=logging.ERROR))
    assert repeats.filter(_record(name="saypi.db"))

    def failure(kind):
        try:
            raise kind("x")
        except Exception:
            return sys.exc_info()

    def other_place():
        return failure(KeyError)

    for info, passes in [(failure(KeyError), True), (failure(ValueError), True),
                         (failure(KeyError), False), (other_place(), False)]:
        assert repeats.filter(_record("unhandled exception", logging.ERROR, args=(),
                                      exc_info=info)) is passes
    try:
        {}["k"]
    except KeyError:
        here = sys.exc_info()  # KeyError raised at another line: another group
    assert repeats.filter(_record("unhandled exception", logging.ERROR, args=(), exc_info=here))


def test_info_debug_and_critical_are_never_limited():
    repeats = RepeatFilter(None, burst=1, window=1.0, clock=FakeClock())
    for level in (logging.DEBUG, logging.INFO, logging.CRITICAL):
        assert all(repeats.filter(_record(level=level)) for _ in range(100))
    assert repeats._groups == {}


def test_repeat_counts_are_exact_under_threads():
    clock, emitted = FakeClock(), []
    repeats = RepeatFilter(emitted.append, burst=5, window=1.0, clock=clock)
    counts: list[int] = []

    def worker() -> None:
        mine = sum(repeats.filter(_record()) for _ in range(2000))
        counts.append(mine)

    run_threads(worker, [()] * 8)
    clock.now += 1.0
    repeats.flush()
    assert sum(counts) == 5
    assert [r.repeated for r in emitted] == [8 * 2000 - 5]


def test_new_logger_limits_repeats_and_writes_the_summary_as_json():
    out = io.StringIO()
    logger = new_logger(out, "INFO", "json", name="logs-repeats")
    handler = logger.handlers[0]
    [repeats] = [f for f in handler.filters if isinstance(f, RepeatFilter)]
    clock = FakeClock()
    repeats.clock = clock
    for _ in range(500):
        logger.warning("database unavailable: %s", f"Bearer {TOKEN}")
    for _ in range(50):
        logger.info("ordinary line")  # never limited
    clock.now += 1.0
    AccessLog(logger).flush()  # the worker's flush every second
    lines = _lines(out.getvalue())
    warnings = [line for line in lines if line["level"] == "WARNING"]
    assert len(warnings) == repeats.burst + 1
    assert warnings[-1]["repeated"] == 500 - repeats.burst
    assert "(repeated 495 more times in the last 1.0 s)" in warnings[-1]["message"]
    assert "request_id" not in warnings[-1]
    assert sum(line["message"] == "ordinary line" for line in lines) == 50
    assert LEAK not in out.getvalue()


def test_access_lines_never_meet_the_repeat_filter():
    for fmt in ("json", "text"):
        out = io.StringIO()
        access = AccessLog(new_logger(out, "INFO", fmt, name=f"logs-access-{fmt}"))
        for _ in range(300):
            access.write("rid", "GET", "/health/live", 503, 1.0, "127.0.0.1", 10)
        access.flush()
        assert len(out.getvalue().splitlines()) == 300, fmt
