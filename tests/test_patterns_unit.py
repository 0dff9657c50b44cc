"""The character rules are written once (app/http/patterns.py); the OpenAPI description's
JSON Schema patterns must say the same (app/openapi.py still spells them out)."""

from __future__ import annotations

from app import openapi
from app.http import patterns


def test_openapi_patterns_are_the_shared_ones():
    assert openapi.NO_CONTROL == patterns.anchored(f"[^{patterns.CONTROL_CHARS}]*")
    assert openapi.NO_CONTROL_EXCEPT_NEWLINE_TAB == patterns.anchored(
        f"[^{patterns.CONTROL_CHARS_EXCEPT_NEWLINE_TAB}]*")
    assert openapi.PRINTABLE_ASCII == patterns.anchored(f"[{patterns.PRINTABLE_ASCII_CHARS}]*")
    assert openapi.IDEMPOTENCY_KEY == patterns.anchored(patterns.IDEMPOTENCY_KEY)
    assert openapi.REQUEST_ID == patterns.anchored(patterns.REQUEST_ID)
