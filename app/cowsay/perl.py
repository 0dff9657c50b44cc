"""The ``.cow`` parser: the subset of Perl that cow files use, turned into templates.

Rather than executing Perl, it understands here-documents, interpolation and escapes, and a
few simple assignments (``$extra = chop($eyes);``), once per file at load time. Anything
else is a :class:`CowParseError` and the file is skipped.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


class CowParseError(ValueError):
    """A ``.cow`` file uses Perl this module cannot evaluate (or is not a cow file)."""


@dataclass(frozen=True)
class Cow:
    """One animal.

    ``template`` is the art as a :meth:`str.format_map` template whose fields are
    variable names (``{eyes}``, ``{tongue}``, ``{thoughts}``, or variables computed by
    ``program``); literal braces are doubled.  ``program`` holds the preamble
    statements (e.g. ``$extra = chop($eyes);``) to run before substitution; it is
    empty for almost every cow.
    """

    name: str
    template: str
    path: str
    program: tuple[tuple, ...] = ()


# --------------------------------------------------------------------------------------
# Perl subset: here-documents, interpolation and a few statements
# --------------------------------------------------------------------------------------

# Variables cowsay provides to the cow file at run time.
_RUNTIME_VARS = frozenset({"eyes", "tongue", "thoughts", "progname"})
# cowsay globals (and Perl's) with a fixed value when the cow file runs; names not
# listed anywhere are undefined globals, which interpolate as "".
_CONSTANT_VARS = MappingProxyType({"version": "3.03", "pathsep": ":"})
# Globals whose value depends on the cowsay process (environment, arguments, paths).
_PROCESS_VARS = frozenset({"cowpath", "ENV", "INC", "ARGV", "ARGVOUT", "0"})
_PROCESS_ARRAYS = frozenset({"ARGV", "INC", "message", "balloon_lines", "-", "+"})
# Perl's ``$.``, the line number of the last line read: it depends on the text
# (see _input_line), so it is a runtime variable under a format key that no Perl
# name can spell (names never contain "$").
_INPUT_LINE = "$input_line"
# Punctuation variables whose value is fixed while cowsay loads a cow file.
_SPECIAL_SCALARS = MappingProxyType(
    {
        ";": "\x1c",
        ",": "",
        "/": "\n",
        "\\": "",
        '"': " ",
        ":": " \n-",
        "=": "60",
        "-": "0",
        "%": "0",
        "|": "0",
        "?": "0",
        "^": "STDOUT_TOP",
        "~": "STDOUT",
        "@": "",
    }
)
_PERL_SPACE = " \t\n\r\f\v"
_NAME_RE = re.compile(r"(?:::)?[A-Za-z_]\w*(?:::\w+|'[A-Za-z_]\w*)*(?:::)?", re.ASCII)
_DIGITS_RE = re.compile(r"\d+", re.ASCII)
_BRACED_NAME_RE = re.compile(r"\{\s*(\^?\w+)\s*\}", re.ASCII)
_WORD_RE = re.compile(r"\w+", re.ASCII)
_CODE_VAR_RE = re.compile(
    r"\$(?:\{\s*([A-Za-z_]\w*)\s*\}|((?:::)?[A-Za-z_]\w*(?:::\w+)*))", re.ASCII
)
_HEREDOC_RE = re.compile(
    r"""<<(~?)(?:([A-Za-z_]\w*)|[ \t]*"([^"\n]*)"|[ \t]*'([^'\n]*)'|[ \t]+([A-Za-z_]\w*))"""
)
_POD_END_RE = re.compile(r"^=cut\b.*(?:\n|\Z)", re.M)
_HEX_RE = re.compile(r"[0-9A-Fa-f]{0,2}")
_OCT_RE = re.compile(r"[0-7]{1,3}")
_SIMPLE_ESCAPES = MappingProxyType(
    {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "b": "\b", "a": "\a", "e": "\x1b"}
)


@dataclass(frozen=True)
class _Var:
    """A variable reference inside an interpolated string."""

    name: str


def _normalize_name(raw: str) -> str:
    name = raw.replace("'", "::")
    if name.startswith("::"):
        name = "main" + name
    while name.startswith("main::"):
        name = name[6:]
    if "::" in name or not name:
        raise CowParseError(f"package variable ${raw} is not supported")
    return name


def _check_no_subscript(s: str, j: int, what: str) -> None:
    """Perl reads ``$x[..]``, ``$x{..}`` and ``$x->[..]`` as element access."""
    if s.startswith(("[", "{", "->[", "->{"), j):
        raise CowParseError(f"element access after {what} is not supported")


def _scan_scalar(s: str, i: int) -> tuple[str | _Var, int]:
    """Interpolate the ``$`` at ``s[i]``; return (literal text or variable, end index)."""
    n = len(s)
    k = i + 1
    while k < n and s[k] in _PERL_SPACE:  # Perl allows "$ name", even across lines
        k += 1
    if k >= n:
        raise CowParseError("final $ should be \\$ or $name")
    c = s[k]
    if c == "{":
        m = _BRACED_NAME_RE.match(s, k)
        if not m or m.group(1)[0] == "^" or m.group(1)[0].isdigit():
            raise CowParseError("${ ... } expressions are not supported")
        return _Var(_normalize_name(m.group(1))), m.end()  # ${name}[ is not a subscript
    m = _NAME_RE.match(s, k)
    if m:
        _check_no_subscript(s, m.end(), "$" + m.group())
        return _Var(_normalize_name(m.group())), m.end()
    if s.startswith("::", k):
        raise CowParseError("unsupported variable $::")
    if c.isdigit():
        m = _DIGITS_RE.match(s, k)
        assert m is not None
        if m.group() == "0":
            raise CowParseError("$0 depends on how cowsay was started")
        _check_no_subscript(s, m.end(), "$" + m.group())
        return "", m.end()  # no capture groups are set when cowsay loads the cow
    if c == "^" and k + 1 < n and s[k + 1] in "ABCDEFGHIJKLMNOPQRSTUVWXYZ[]^_?\\":
        raise CowParseError(f"special variable $^{s[k + 1]} is not supported")
    if c == ".":
        _check_no_subscript(s, k + 1, "$.")
        return _Var(_INPUT_LINE), k + 1
    if c in _SPECIAL_SCALARS:
        _check_no_subscript(s, k + 1, "$" + c)
        return _SPECIAL_SCALARS[c], k + 1
    raise CowParseError(f"special variable ${c} is not supported")


def _scan_array(s: str, i: int) -> tuple[str, int] | None:
    """Interpolate the ``@`` at ``s[i]``; None when Perl keeps it as a literal ``@``."""
    n = len(s)
    c = s[i + 1] if i + 1 < n else ""
    if not c or not (c.isascii() and (c.isalnum() or c in "_:'{$+-")):
        return None
    if c in "{$+-":
        raise CowParseError(f"array expression @{c} is not supported")
    if c == ":" and not s.startswith("::", i + 1):
        name, end = ":", i + 2
    elif c == "'":
        m = _NAME_RE.match(s, i + 2)
        if not m or m.group().startswith(":"):
            raise CowParseError("array expression @' is not supported")
        name, end = _normalize_name("::" + m.group()), m.end()
    elif c.isdigit():
        m = _DIGITS_RE.match(s, i + 1)
        assert m is not None
        name, end = m.group(), m.end()
    else:
        m = _NAME_RE.match(s, i + 1)
        if not m:
            raise CowParseError("unsupported array expression")
        name, end = _normalize_name(m.group()), m.end()
    if s.startswith(("[", "{"), end):
        raise CowParseError(f"array slice @{name} is not supported")
    if name in _PROCESS_ARRAYS:
        raise CowParseError(f"@{name} depends on the cowsay process")
    return "", end  # any other array is empty when the cow file is loaded


def _char(code: int) -> str:
    if not 0 <= code <= 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        raise CowParseError(f"escape for invalid character U+{code:X}")
    return chr(code)


def _scan_escape(s: str, i: int) -> tuple[str, int]:
    """Decode the backslash escape at ``s[i]`` as Perl's double-quoted strings do."""
    n = len(s)
    if i + 1 >= n:
        return "\\", n
    c = s[i + 1]
    j = i + 2
    if c in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[c], j
    if c in "01234567":
        m = _OCT_RE.match(s, i + 1)
        assert m is not None
        return _char(int(m.group(), 8)), m.end()
    if c == "x":
        if j < n and s[j] == "{":
            close = s.find("}", j)
            digits = s[j + 1 : close].replace("_", "") if close > 0 else "?"
            if not re.fullmatch(r"[0-9A-Fa-f]*", digits):
                raise CowParseError("unsupported \\x{...} escape")
            return _char(int(digits or "0", 16)), close + 1
        m = _HEX_RE.match(s, j)
        assert m is not None
        return _char(int(m.group() or "0", 16)), m.end()
    if c == "o":
        close = s.find("}", j)
        if not s.startswith("{", j) or close < 0 or not re.fullmatch(r"[0-7]+", s[j + 1 : close]):
            raise CowParseError("unsupported \\o escape")
        return _char(int(s[j + 1 : close], 8)), close + 1
    if c == "c":
        if j >= n or s[j] == "{" or not s[j].isascii():
            raise CowParseError("unsupported \\c escape")
        return chr(ord(s[j].upper()) ^ 64), j + 1
    if c == "N":
        close = s.find("}", j)
        if not s.startswith("{", j) or close < 0:
            raise CowParseError("unsupported \\N escape")
        spec = s[j + 1 : close]
        try:
            if spec.startswith("U+"):
                return _char(int(spec[2:], 16)), close + 1
            return unicodedata.lookup(spec), close + 1
        except (KeyError, ValueError) as exc:
            raise CowParseError(f"unknown character \\N{{{spec}}}") from exc
    if c == "E":
        return "", j
    if c in "ULQFul":
        raise CowParseError(f"case modifier \\{c} is not supported")
    return c, j  # \\ \$ \@ \" and unrecognised escapes stand for the character itself


def _interpolate(s: str) -> tuple[str | _Var, ...]:
    """Split a double-quoted Perl string into literal text and variable references."""
    parts: list[str | _Var] = []
    buf: list[str] = []
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c == "\\":
            text, i = _scan_escape(s, i)
            buf.append(text)
        elif c == "$":
            item, i = _scan_scalar(s, i)
            if isinstance(item, str):
                buf.append(item)
            else:
                if buf:
                    parts.append("".join(buf))
                    buf = []
                parts.append(item)
        elif c == "@" and (found := _scan_array(s, i)) is not None:
            buf.append(found[0])
            i = found[1]
        else:
            j = i + 1
            while j < n and s[j] not in "\\$@":
                j += 1
            buf.append(s[i:j])
            i = j
    if buf:
        parts.append("".join(buf))
    return tuple(parts)


def _single_quoted(s: str) -> str:
    return re.sub(r"\\([\\'])", r"\1", s)


_BRACKETS = MappingProxyType({"(": ")", "[": "]", "{": "}", "<": ">"})


class _Lexer:
    """Tokenizer for the statement subset of Perl found in cow files."""

    def __init__(self, source: str) -> None:
        self.src = source
        self.pos = 0
        self.tokens: list[tuple[str, object]] = []
        # here-documents whose body starts on the next line: (token index, terminator,
        # interpolating, indented)
        self.pending: list[tuple[int, str, bool, bool]] = []

    def error(self, message: str) -> CowParseError:
        line = self.src.count("\n", 0, self.pos) + 1
        return CowParseError(f"line {line}: {message}")

    def run(self) -> list[tuple[str, object]]:
        src, n = self.src, len(self.src)
        at_line_start = True
        while self.pos < n:
            c = src[self.pos]
            if c == "\n":
                self.pos += 1
                at_line_start = True
                if self.pending:
                    self._read_heredoc_bodies()
                continue
            if at_line_start and c == "=" and self.pos + 1 < n and src[self.pos + 1].isalpha():
                self._skip_pod()
                continue
            at_line_start = False
            if c in " \t\r\f\v":
                self.pos += 1
            elif c == "#":
                end = src.find("\n", self.pos)
                self.pos = n if end < 0 else end
            elif c == "$":
                self._variable()
            elif c == "'":
                self.tokens.append(("str", _single_quoted(self._delimited("'", "'"))))
            elif c == '"':
                self.tokens.append(("interp", _interpolate(self._delimited('"', '"'))))
            elif src.startswith("<<", self.pos):
                self._heredoc_start()
            elif c.isdigit():
                m = _DIGITS_RE.match(src, self.pos)
                assert m is not None
                self.tokens.append(("num", m.group()))
                self.pos = m.end()
            elif c.isalpha() or c == "_":
                m = _WORD_RE.match(src, self.pos)
                assert m is not None
                word = m.group()
                if word in ("__END__", "__DATA__"):
                    break
                self.pos = m.end()
                if word in ("q", "qq") and self._quote_like(word):
                    continue
                if word == "x" and re.match(r"=(?![=~>])", src[self.pos : self.pos + 2]):
                    self.pos += 1
                    self.tokens.append(("op", "x="))
                else:
                    self.tokens.append(("word", word))
            elif src.startswith(".=", self.pos):
                self.tokens.append(("op", ".="))
                self.pos += 2
            elif c in "=.(),;" and not src.startswith(("=~", "==", "=>"), self.pos):
                self.tokens.append(("op", c))
                self.pos += 1
            else:
                raise self.error(f"unsupported Perl syntax near {src[self.pos : self.pos + 10]!r}")
        if self.pending:
            raise self.error("here-document without body")
        return self.tokens

    def _skip_pod(self) -> None:
        m = _POD_END_RE.search(self.src, self.pos)
        self.pos = len(self.src) if m is None else m.end()

    def _variable(self) -> None:
        src = self.src
        m = _CODE_VAR_RE.match(src, self.pos)
        if not m:
            raise self.error(f"unsupported variable near {src[self.pos : self.pos + 10]!r}")
        self.pos = m.end()
        if src.startswith(("[", "{", "->"), self.pos):
            raise self.error("element access is not supported")
        self.tokens.append(("var", _normalize_name(m.group(1) or m.group(2))))

    def _delimited(self, open_: str, close: str) -> str:
        """Return the raw text between ``open_`` (at self.pos) and its ``close``."""
        src, n = self.src, len(self.src)
        i = self.pos + 1
        depth = 1
        start = i
        while i < n:
            c = src[i]
            if c == "\\":
                i += 2
                continue
            if c == close and open_ != close:
                depth -= 1
            elif c == open_ and open_ != close:
                depth += 1
            elif c == close:
                depth = 0
            if depth == 0:
                self.pos = i + 1
                return src[start:i]
            i += 1
        raise self.error("unterminated string")

    def _quote_like(self, word: str) -> bool:
        src = self.src
        j = self.pos
        while j < len(src) and src[j] in " \t":
            j += 1
        if j >= len(src) or src[j].isalnum() or src[j] in "_=,;)" or src[j].isspace():
            return False
        self.pos = j
        open_ = src[j]
        raw = self._delimited(open_, _BRACKETS.get(open_, open_))
        if word == "q":
            self.tokens.append(("str", _single_quoted(raw)))
        else:
            self.tokens.append(("interp", _interpolate(raw)))
        return True

    def _heredoc_start(self) -> None:
        m = _HEREDOC_RE.match(self.src, self.pos)
        if not m:
            raise self.error("unsupported << expression")
        self.pos = m.end()
        indented = bool(m.group(1))
        if m.group(4) is not None:
            terminator, interp = m.group(4), False
        else:
            terminator = next(g for g in (m.group(2), m.group(3), m.group(5)) if g is not None)
            interp = True
        self.pending.append((len(self.tokens), terminator, interp, indented))
        self.tokens.append(("heredoc", None))

    def _read_heredoc_bodies(self) -> None:
        src = self.src
        for index, terminator, interp, indented in self.pending:
            lines: list[str] = []
            while True:
                if self.pos >= len(src):
                    raise self.error(f"can't find here-document terminator {terminator!r}")
                end = src.find("\n", self.pos)
                line = src[self.pos : (len(src) if end < 0 else end)]
                self.pos = len(src) if end < 0 else end + 1
                if (line.lstrip(" \t") if indented else line) == terminator:
                    break
                lines.append(line)
            if indented:
                indent = line[: len(line) - len(line.lstrip(" \t"))]
                if any(ln and not ln.startswith(indent) for ln in lines):
                    raise self.error("here-document indentation does not match its terminator")
                lines = [ln[len(indent) :] for ln in lines]
            body = "".join(ln + "\n" for ln in lines)
            self.tokens[index] = ("interp", _interpolate(body)) if interp else ("str", body)
        self.pending = []


# Expressions are tuples: ("lit", str) ("var", name) ("interp", parts) ("concat", a, b)
# ("repeat", a, b) ("call", function, args).  Statements: ("assign", name, op, expr)
# with op "=", ".=" or "x=", and ("eval", expr).
_FUNCTIONS = MappingProxyType(
    {
        "chop": 1,
        "chomp": 1,
        "uc": 1,
        "lc": 1,
        "ucfirst": 1,
        "lcfirst": 1,
        "length": 1,
        "reverse": -1,
        "substr": -1,
    }
)
_MUTATING = frozenset({"chop", "chomp"})
_MAX_REPEAT = 1000
_IGNORED_STATEMENTS = frozenset({"use", "no", "binmode"})


#: Deepest parenthesised expression a .cow file may hold (real ones nest a few levels).
MAX_NESTING = 64


class _Parser:
    """Recursive-descent parser over :class:`_Lexer` tokens."""

    def __init__(self, tokens: list[tuple[str, object]]) -> None:
        self.tokens = tokens
        self.i = 0
        self.depth = 0  # open parentheses: bounded, whatever Python's recursion limit is

    def peek(self, offset: int = 0) -> tuple[str, object]:
        j = self.i + offset
        return self.tokens[j] if j < len(self.tokens) else ("eof", None)

    def take(self) -> tuple[str, object]:
        tok = self.peek()
        self.i += 1
        return tok

    def expect(self, kind: str, value: object = None) -> tuple[str, object]:
        tok = self.take()
        if tok[0] != kind or (value is not None and tok[1] != value):
            raise CowParseError(f"unexpected {tok[1]!r}, expected {value or kind}")
        return tok

    def statements(self) -> list[tuple]:
        result: list[tuple] = []
        while self.peek()[0] != "eof":
            if self.peek() == ("op", ";"):
                self.take()
                continue
            stmt = self.statement()
            if stmt is not None:
                result.append(stmt)
            if self.peek()[0] != "eof":
                self.expect("op", ";")
        return result

    def statement(self) -> tuple | None:
        kind, value = self.peek()
        if kind == "word" and value in _IGNORED_STATEMENTS:
            while self.peek()[0] != "eof" and self.peek() != ("op", ";"):
                self.take()
            return None
        if kind == "word" and value in ("my", "our", "local"):
            self.take()
            kind, value = self.peek()
            if kind != "var":
                raise CowParseError(f"unsupported declaration {value!r}")
        if kind == "var" and self.peek(1)[0] == "op" and self.peek(1)[1] in ("=", ".=", "x="):
            self.take()
            op = self.take()[1]
            return ("assign", value, op, self.expression())
        expr = self.expression()
        if expr[0] == "call" and expr[1] in _MUTATING:
            return ("eval", expr)
        if expr[0] in ("lit", "interp", "var"):
            return None  # e.g. the customary "1;" or a bare "my $x;"
        raise CowParseError("unsupported statement")

    def expression(self) -> tuple:
        left = self.repetition()
        while self.peek() == ("op", "."):
            self.take()
            left = ("concat", left, self.repetition())
        return left

    def repetition(self) -> tuple:
        left = self.term()
        while True:
            kind, value = self.peek()
            if kind == "word" and isinstance(value, str) and re.fullmatch(r"x\d*", value):
                self.take()
                count = ("lit", value[1:]) if value != "x" else self.term()
                left = ("repeat", left, count)
            else:
                return left

    def term(self) -> tuple:
        kind, value = self.take()
        if kind in ("str", "num"):
            return ("lit", value)
        if kind == "interp":
            return ("interp", value)
        if kind == "var":
            return ("var", value)
        if kind == "op" and value == "(":
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise CowParseError(f"parentheses nested deeper than {MAX_NESTING}")
            inner = self.expression()
            self.expect("op", ")")
            self.depth -= 1
            return inner
        if kind == "word" and value in _FUNCTIONS:
            return self.call(str(value))
        raise CowParseError(f"unsupported expression {value!r}")

    def call(self, name: str) -> tuple:
        args: list[tuple] = []
        if self.peek() == ("op", "("):
            self.take()
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise CowParseError(f"parentheses nested deeper than {MAX_NESTING}")
            while self.peek() != ("op", ")"):
                args.append(self.expression())
                if self.peek() == ("op", ","):
                    self.take()
                elif self.peek() != ("op", ")"):
                    raise CowParseError(f"bad arguments to {name}")
            self.take()
            self.depth -= 1
        elif self.peek()[0] == "var":
            args.append(("var", self.take()[1]))
        arity = _FUNCTIONS[name]
        if (arity >= 0 and len(args) != arity) or (name == "substr" and len(args) not in (2, 3)):
            raise CowParseError(f"wrong number of arguments to {name}")
        if name in _MUTATING and args[0][0] != "var":
            raise CowParseError(f"{name} needs a variable")
        return ("call", name, tuple(args))


def _perl_int(value: str) -> int:
    m = re.match(r"\s*([+-]?\d+)", value)
    return int(m.group(1)) if m else 0


def _repeat_count(value: str) -> int:
    # No real cow repeats anything this often; the cap keeps a hostile file cheap.
    return min(max(0, _perl_int(value)), _MAX_REPEAT)


def _eval(expr: tuple, env: dict[str, str]) -> str:
    tag = expr[0]
    if tag == "lit":
        return expr[1]
    if tag == "var":
        return env.get(expr[1], "")
    if tag == "interp":
        return "".join(p if isinstance(p, str) else env.get(p.name, "") for p in expr[1])
    if tag == "concat":
        return _eval(expr[1], env) + _eval(expr[2], env)
    if tag == "repeat":
        return _eval(expr[1], env) * _repeat_count(_eval(expr[2], env))
    name, args = expr[1], expr[2]
    if name in _MUTATING:
        var = args[0][1]
        value = env.get(var, "")
        if name == "chop":
            env[var] = value[:-1]
            return value[-1:]
        if value.endswith("\n"):
            env[var] = value[:-1]
            return "1"
        return "0"
    values = [_eval(a, env) for a in args]
    if name == "uc":
        return values[0].upper()
    if name == "lc":
        return values[0].lower()
    if name == "ucfirst":
        return values[0][:1].upper() + values[0][1:]
    if name == "lcfirst":
        return values[0][:1].lower() + values[0][1:]
    if name == "length":
        return str(len(values[0]))
    if name == "reverse":
        return "".join(values)[::-1]
    # substr(string, offset[, length])
    text = values[0]
    start = _perl_int(values[1])
    if start < 0:
        start += len(text)
    if not 0 <= start <= len(text):
        return ""
    if len(values) == 2:
        return text[start:]
    length = _perl_int(values[2])
    stop = start + length if length >= 0 else len(text) + length
    return text[start : max(start, stop)]


def _run(program: tuple[tuple, ...], env: dict[str, str]) -> None:
    for stmt in program:
        if stmt[0] == "eval":
            _eval(stmt[1], env)
            continue
        _, name, op, expr = stmt
        value = _eval(expr, env)
        if op == ".=":
            value = env.get(name, "") + value
        elif op == "x=":
            value = env.get(name, "") * _repeat_count(value)
        env[name] = value


def _resolve(expr: tuple, runtime: frozenset[str]) -> tuple:
    """Replace references to variables nobody sets at run time by their fixed value."""
    tag = expr[0]
    if tag == "var":
        name = expr[1]
        return expr if name in runtime else ("lit", _fixed_value(name))
    if tag == "interp":
        parts: list[str | _Var] = []
        for p in expr[1]:
            if isinstance(p, _Var) and p.name not in runtime:
                p = _fixed_value(p.name)
            if isinstance(p, str) and parts and isinstance(parts[-1], str):
                parts[-1] += p
            elif p != "":
                parts.append(p)
        if not parts:
            return ("lit", "")
        if len(parts) == 1 and isinstance(parts[0], str):
            return ("lit", parts[0])
        return ("interp", tuple(parts))
    if tag in ("concat", "repeat"):
        return (tag, _resolve(expr[1], runtime), _resolve(expr[2], runtime))
    if tag == "call":
        return ("call", expr[1], tuple(_resolve(a, runtime) for a in expr[2]))
    return expr


def _fixed_value(name: str) -> str:
    if name in _PROCESS_VARS:
        raise CowParseError(f"${name} depends on the cowsay process")
    return _CONSTANT_VARS.get(name, "")  # undefined Perl globals interpolate as ""


def _assigned_names(statements: Iterable[tuple]) -> set[str]:
    names: set[str] = set()

    def visit(expr: tuple) -> None:
        if expr[0] == "call":
            if expr[1] in _MUTATING:
                names.add(expr[2][0][1])
            for arg in expr[2]:
                visit(arg)
        elif expr[0] in ("concat", "repeat"):
            visit(expr[1])
            visit(expr[2])

    for stmt in statements:
        if stmt[0] == "assign":
            names.add(stmt[1])
            visit(stmt[3])
        else:
            visit(stmt[1])
    return names


def _escape_braces(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _template_of(expr: tuple) -> str | None:
    """Turn an expression into a format_map template, if it is plain interpolation."""
    tag = expr[0]
    if tag == "lit":
        return _escape_braces(expr[1])
    if tag == "var":
        return "{" + expr[1] + "}"
    if tag == "interp":
        return "".join(
            _escape_braces(p) if isinstance(p, str) else "{" + p.name + "}" for p in expr[1]
        )
    if tag == "concat":
        left, right = _template_of(expr[1]), _template_of(expr[2])
        return None if left is None or right is None else left + right
    return None


def parse_cow(name: str, source: str, path: str = "") -> Cow:
    """Parse the text of a ``.cow`` file into a :class:`Cow`.

    Raises CowParseError (a ValueError subclass) when the file cannot be parsed.
    """
    source = source.replace("\r\n", "\n")
    if source.startswith("\ufeff"):
        source = source[1:]
    try:
        statements = _Parser(_Lexer(source).run()).statements()
    except CowParseError:
        raise
    except (ValueError, OverflowError, RecursionError) as exc:  # e.g. absurd nesting
        raise CowParseError(f"cannot parse: {exc}") from exc
    assigned = _assigned_names(statements)
    if "the_cow" not in assigned:
        raise CowParseError("no $the_cow assignment found")
    runtime = frozenset(_RUNTIME_VARS | assigned | {_INPUT_LINE})
    resolved: list[tuple[Any, ...]] = [
        (s[0], s[1], s[2], _resolve(s[3], runtime))
        if s[0] == "assign"
        else (s[0], _resolve(s[1], runtime))
        for s in statements
    ]
    # Variables first set by the cow file start out with cowsay's value for them.
    initial = tuple(
        ("assign", var, "=", ("lit", _fixed_value(var)))
        for var in sorted(assigned - _RUNTIME_VARS - {"the_cow"})
    )
    last = resolved[-1]
    template = None
    if last[0] == "assign" and last[1] == "the_cow" and last[2] == "=":
        template = _template_of(last[3])
    if template is not None:
        program = initial + tuple(resolved[:-1])
    else:
        program = initial + tuple(resolved)
        template = "{the_cow}"
    cow = Cow(name=name, template=template, path=path, program=program)
    try:  # a trial run, so that problems surface at load time rather than per request
        cow_art(cow, "oo", "  ", "\\", "cowsay", "")
    except (ValueError, KeyError, IndexError, OverflowError, MemoryError, RecursionError) as exc:
        raise CowParseError(f"cannot render: {exc!r}") from exc
    return cow


def cow_art(cow: Cow, eyes: str, tongue: str, thoughts: str, progname: str,
             input_line: str) -> str:
    env = {"eyes": eyes, "tongue": tongue, "thoughts": thoughts, "progname": progname,
           _INPUT_LINE: input_line}
    env["the_cow"] = ""
    if cow.program:
        _run(cow.program, env)
    return cow.template.format_map(env)
