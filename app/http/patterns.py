"""The contract's character rules, written once as regular expressions.

Each reads the same in Python's `re` and ECMA 262 (JSON Schema): `\\uXXXX` escapes, classes
and counts only. `*_CHARS` are class bodies for `[...]`/`[^...]`; the others match a whole
value (`fullmatch`, or `anchored` for a JSON Schema pattern).
"""

from __future__ import annotations

CONTROL_CHARS = r"\u0000-\u001f\u007f-\u009f"  # C0, DEL and C1 (API.md)
CONTROL_CHARS_EXCEPT_NEWLINE_TAB = r"\u0000-\u0008\u000b-\u001f\u007f-\u009f"
PRINTABLE_ASCII_CHARS = r"\u0020-\u007e"
REQUEST_ID = r"[A-Za-z0-9._-]{1,128}"  # an X-Request-ID SayPI echoes
IDEMPOTENCY_KEY = rf"[{PRINTABLE_ASCII_CHARS}]{{1,255}}"


def anchored(pattern: str) -> str:
    """The pattern as a JSON Schema pattern for a whole string."""
    return f"^{pattern}$"
