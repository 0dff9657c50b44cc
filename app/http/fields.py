"""Strict marshmallow fields for request parameters.

JSON values must already have the documented type (no coercion); form values, all strings,
are converted by `decode` first, and both meet the same rules. Every message reads as the
end of "Parameter `x` ...".
"""

from __future__ import annotations

import re
from datetime import UTC
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields

from app.domain import ids
from app.http.patterns import (
    CONTROL_CHARS,
    CONTROL_CHARS_EXCEPT_NEWLINE_TAB,
    PRINTABLE_ASCII_CHARS,
)

_CONTROL = re.compile(f"[{CONTROL_CHARS}]")
_CONTROL_EXCEPT_NEWLINE_TAB = re.compile(f"[{CONTROL_CHARS_EXCEPT_NEWLINE_TAB}]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # JSON can escape one; UTF-8 cannot encode it
_PRINTABLE_ASCII = re.compile(f"[{PRINTABLE_ASCII_CHARS}]*")

MESSAGES = {
    "required": "is required",
    "null": "must not be null",
}


class Text(fields.String):
    """A string of bounded length without control characters (newline/tab optional)."""

    def __init__(self, *, min_length: int = 0, max_length: int | None = None,
                 allow_newlines: bool = False, printable_ascii: bool = False,
                 forbid: str = "", **kwargs: Any):
        kwargs.setdefault("error_messages", {})
        kwargs["error_messages"] = {**MESSAGES, **kwargs["error_messages"]}
        super().__init__(**kwargs)
        self.min_length = min_length
        self.max_length = max_length
        self.allow_newlines = allow_newlines
        self.printable_ascii = printable_ascii
        self.forbid = forbid

    def describe(self) -> str:
        if self.printable_ascii:
            kind = "printable ASCII characters"
        else:
            kind = "characters"
        if self.max_length is None:
            return f"must be a string of at least {self.min_length} {kind}"
        if self.min_length == self.max_length:
            return f"must be a string of exactly {self.max_length} {kind}"
        return f"must be a string of {self.min_length} to {self.max_length} {kind}"

    def _deserialize(self, value: Any, attr, data, **kwargs) -> str:
        if not isinstance(value, str):
            raise ValidationError(self.describe())
        control = _CONTROL_EXCEPT_NEWLINE_TAB if self.allow_newlines else _CONTROL
        if control.search(value):
            raise ValidationError("must not contain control characters")
        if _SURROGATE.search(value):
            raise ValidationError("must not contain unpaired surrogates")
        if self.printable_ascii and not _PRINTABLE_ASCII.fullmatch(value):
            raise ValidationError(self.describe())
        if self.forbid and any(ch in value for ch in self.forbid):
            raise ValidationError(f"must not contain {', '.join(repr(c) for c in self.forbid)}")
        if len(value) < self.min_length or (self.max_length is not None
                                            and len(value) > self.max_length):
            raise ValidationError(self.describe())
        return value


class Email(Text):
    """One @ with a non-empty local part and a domain containing a dot; no spaces."""

    def __init__(self, **kwargs: Any):
        super().__init__(min_length=3, max_length=254, **kwargs)

    def describe(self) -> str:
        return "must be an email address of at most 254 characters"

    def _deserialize(self, value: Any, attr, data, **kwargs) -> str:
        value = super()._deserialize(value, attr, data, **kwargs)
        local, at, domain = value.partition("@")
        if (not at or not local or "@" in domain or " " in value or "." not in domain
                or domain.startswith(".") or domain.endswith(".")):
            raise ValidationError(self.describe())
        return value


class Bool(fields.Field):
    """A JSON boolean (form bodies: true/false, converted by decode)."""

    form_values = {"true": True, "false": False, "1": True, "0": False}

    def __init__(self, **kwargs: Any):
        kwargs["error_messages"] = {**MESSAGES, **kwargs.get("error_messages", {})}
        super().__init__(**kwargs)

    def _deserialize(self, value: Any, attr, data, **kwargs) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("must be a boolean (true or false)")
        return value

    def _serialize(self, value, attr, obj, **kwargs):
        return value


def load_params(schema: Schema, params: dict[str, Any], from_form: bool = False
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load a body's parameters (or one object of a list of them) with `schema`.

    Unknown parameters are ignored, a null means "not given" unless the field
    clears with it, and form values of Bool fields are converted first.
    Returns what loaded and marshmallow's messages for what did not (empty
    when everything is valid).
    """
    cleaned: dict[str, Any] = {}
    for name, value in params.items():
        field = schema.fields.get(name)
        if field is None:
            continue  # unknown parameters are ignored
        if value is None and not field.allow_none:
            continue  # JSON null means "not given" unless the field clears with it
        if from_form and isinstance(field, Bool) and isinstance(value, str):
            value = Bool.form_values.get(value.strip().lower(), value)
        cleaned[name] = value
    try:
        return schema.load(cleaned, unknown=EXCLUDE), {}
    except ValidationError as exc:
        valid = exc.valid_data if isinstance(exc.valid_data, dict) else {}
        return valid, exc.messages if isinstance(exc.messages, dict) else {}


class ObjectList(fields.Field):
    """A JSON array of 1 to `max_items` objects, each loaded by `schema` as a body is.

    Problems are reported per element (`lines[3].mood`, `lines[0]` for an
    element that is not an object). What did load stays at its index, None
    for an element that is not an object, so later checks can name elements
    by position too.
    """

    def __init__(self, schema: type[Schema], *, max_items: int, **kwargs: Any):
        kwargs["error_messages"] = {**MESSAGES, **kwargs.get("error_messages", {})}
        super().__init__(**kwargs)
        self.schema = schema
        self.max_items = max_items
        self._loader = schema()

    def describe(self) -> str:
        return f"must be a list of 1 to {self.max_items} objects"

    def _deserialize(self, value: Any, attr, data, **kwargs) -> list[dict[str, Any] | None]:
        if not isinstance(value, list) or not 1 <= len(value) <= self.max_items:
            raise ValidationError(self.describe())
        loaded: list[dict[str, Any] | None] = []
        errors: dict[int, Any] = {}
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                loaded.append(None)
                errors[index] = ["must be an object"]
                continue
            valid, messages = load_params(self._loader, item)
            loaded.append(valid)
            if messages:
                errors[index] = messages
        if errors:
            raise ValidationError(errors, valid_data=loaded)
        return loaded


class TextList(fields.Field):
    """A JSON array of `min_items` to `max_items` strings, each as `item` (a Text) loads it."""

    def __init__(self, item: Text, *, min_items: int = 1, max_items: int, **kwargs: Any):
        kwargs["error_messages"] = {**MESSAGES, **kwargs.get("error_messages", {})}
        super().__init__(**kwargs)
        self.item = item
        self.min_items = min_items
        self.max_items = max_items

    def describe(self) -> str:
        return f"must be a list of {self.min_items} to {self.max_items} strings"

    def _deserialize(self, value: Any, attr, data, **kwargs) -> list[str]:
        if not isinstance(value, list) or not self.min_items <= len(value) <= self.max_items:
            raise ValidationError(self.describe())
        loaded, errors = [], {}
        for index, item in enumerate(value):
            try:
                loaded.append(self.item.deserialize(item))
            except ValidationError as exc:
                errors[index] = exc.messages
        if errors:
            raise ValidationError(errors)
        return loaded


class PublicId(fields.Field):
    """Dumps an internal id number as its public prefixed form (usr_..., cv_..., ln_...)."""

    def __init__(self, prefix: str, **kwargs: Any):
        super().__init__(dump_only=True, **kwargs)
        self.prefix = prefix
        self.template = ids.template(prefix)

    def _serialize(self, value, attr, obj, **kwargs):
        return self.template % value


def rfc3339(value) -> str:
    """A timezone-aware datetime as RFC 3339 in UTC, ending in Z."""
    if value.utcoffset():
        value = value.astimezone(UTC)
    text = value.isoformat()  # ends in +00:00 (sessions run in UTC)
    return (text[:-6] if text.endswith("+00:00") else text) + "Z"


class Timestamp(fields.Field):
    """Dumps a timezone-aware datetime as RFC 3339 in UTC with a Z."""

    def __init__(self, **kwargs: Any):
        super().__init__(dump_only=True, **kwargs)

    def _serialize(self, value, attr, obj, **kwargs):
        return rfc3339(value)
