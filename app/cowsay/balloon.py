"""The balloon renderer: text wrapped and framed as cowsay 3.03 does, then the animal's art."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterator

import wcwidth

from app.cowsay.perl import Cow, cow_art

#: cowsay's default ``-W`` value; a balloon line holds at most BALLOON_WIDTH - 1 columns.
BALLOON_WIDTH = 40


# --------------------------------------------------------------------------------------
# Balloon
# --------------------------------------------------------------------------------------

# Perl's \s under Unicode rules (cowsay decodes its arguments in UTF-8 locales).
_WS = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_PARAGRAPH_BREAK = re.compile("\n[" + _WS + "]+")
_WS_RUN = re.compile("[" + _WS + "]+")
_IS_WS = re.compile("[" + _WS + "]")
_SGR = re.compile(r"\x1b\[\d+(?:;\d+)*m")
_iter_graphemes: Callable[[str], Iterator[str]] | None = getattr(wcwidth, "iter_graphemes", None)


def _units(text: str) -> list[str]:
    """Characters as Text::Wrap counts them (grapheme clusters for non-ASCII text)."""
    if text.isascii():
        return list(text)
    if _iter_graphemes is not None:
        return list(_iter_graphemes(text))
    units: list[str] = []
    for ch in text:  # \PM\pM*: a character followed by its combining marks
        if units and unicodedata.category(ch).startswith("M"):
            units[-1] += ch
        else:
            units.append(ch)
    return units


def _display_width(text: str) -> int:
    """Terminal columns of ``text`` (colour escapes and control characters take none)."""
    if text.isascii() and text.isprintable():
        return len(text)
    text = _SGR.sub("", text)
    width = wcwidth.wcswidth(text)
    if width < 0:
        width = sum(max(0, wcwidth.wcwidth(ch)) for ch in text)
    return width


def _unit_width(unit: str) -> int:
    if len(unit) == 1 and " " <= unit <= "~":
        return 1
    return _display_width(unit)


def _wrap_paragraph(text: str, limit: int) -> str:
    """Text::Wrap::wrap("", "", text) with ``$columns = limit + 1``, in display columns."""
    if text.isascii() and text.isprintable():
        return _wrap_printable_ascii(text, limit)
    return _wrap_any(text, limit)


def _wrap_any(text: str, limit: int) -> str:
    """_wrap_paragraph for any text: grapheme clusters and their display widths."""
    units = _units(text)
    n = len(units)
    widths = [_unit_width(u) for u in units]
    is_ws = [bool(_IS_WS.match(u)) for u in units]
    out: list[str] = []
    remainder = ""
    pos = 0
    last_word = max((i for i in range(n) if not is_ws[i]), default=-1)
    while pos <= last_word:  # Text::Wrap stops when only whitespace is left
        # Longest run of at most `limit` columns followed by whitespace or the end.
        fit, used = 0, 0
        while pos + fit < n and used + widths[pos + fit] <= limit:
            used += widths[pos + fit]
            fit += 1
        for k in range(fit, -1, -1):
            if pos + k == n:
                out.append("".join(units[pos:n]))
                remainder, pos = "", n
                break
            if is_ws[pos + k]:
                out.append("".join(units[pos : pos + k]))
                remainder, pos = units[pos + k], pos + k + 1
                break
        else:  # a word longer than the line: cut it
            take = max(fit, 1)
            out.append("".join(units[pos : pos + take]))
            remainder, pos = "\n", pos + take
    return "\n".join(out) + remainder


def _wrap_printable_ascii(text: str, limit: int) -> str:
    """_wrap_paragraph for printable ASCII, where every character is one column wide and
    the only whitespace is the space: the same cuts, found by searching the string
    instead of walking a list of characters (most texts, many times faster)."""
    n = len(text)
    last_word = len(text.rstrip(" ")) - 1
    out: list[str] = []
    remainder = ""
    pos = 0
    while pos <= last_word:
        fit = min(limit, n - pos)
        if pos + fit == n:
            out.append(text[pos:])
            remainder, pos = "", n
            continue
        space = text.rfind(" ", pos, pos + fit + 1)
        if space >= 0:
            out.append(text[pos:space])
            remainder, pos = " ", space + 1
        else:  # a word longer than the line: cut it
            take = max(fit, 1)
            out.append(text[pos : pos + take])
            remainder, pos = "\n", pos + take
    return "\n".join(out) + remainder


def wrap_text(text: str, width: int = BALLOON_WIDTH) -> list[str]:
    """The balloon lines cowsay makes of ``text`` (Text::Wrap's ``fill`` at ``width``)."""
    paragraphs = _PARAGRAPH_BREAK.split(text)
    while paragraphs and paragraphs[-1] == "":
        paragraphs.pop()  # Perl's split drops trailing empty fields
    filled = "\n\n".join(_wrap_paragraph(_WS_RUN.sub(" ", p), width - 1) for p in paragraphs)
    lines = filled.split("\n")
    while lines and lines[-1] == "":
        lines.pop()
    return lines


def _balloon(lines: list[str], think: bool) -> str:
    if not lines:
        lines = [""]
    widths = [_display_width(line) for line in lines]
    width = max(widths)
    if think:
        first, middle, last = "()", "()", "()"
    elif len(lines) < 2:
        first = middle = last = "<>"
    else:
        first, middle, last = "/\\", "||", "\\/"
    out = [" ", "_" * (width + 2), "\n"]
    final = len(lines) - 1
    for index, (line, w) in enumerate(zip(lines, widths, strict=True)):
        border = first if index == 0 else last if index == final else middle
        out += (border[0], " ", line, " " * (width - w), " ", border[1], "\n")
    out += (" ", "-" * (width + 2), "\n")
    return "".join(out)


def _input_line(text: str) -> str:
    """Perl's ``$.`` when the cow file runs, for this text.

    cowsay reads standard input when its argument is Perl-false ("" or "0"), so
    the API defines those two texts as ``printf %s TEXT | cowsay``: no line read
    for "", one for "0". Any other text is an argument, and no line was read.
    """
    if text == "":
        return "0"
    return "1" if text == "0" else ""


def render(cow: Cow, eyes: str, tongue: str, think: bool, text: str) -> str:
    """Pure function: the full cowsay output including the final newline."""
    balloon = _balloon(wrap_text(text), think)
    thoughts, progname = ("o", "cowthink") if think else ("\\", "cowsay")
    art = cow_art(cow, eyes[:2], tongue[:2], thoughts, progname, _input_line(text))
    return balloon + art
