"""Differential tests: app.cowsay.render() against the real cowsay 3.03 program.

Every cow installed by the Debian ``cowsay`` package is rendered by both, for a
fixed set of edge-case texts plus a seeded random set, saying and thinking, with
several eyes/tongue pairs, and the bytes must be identical.  Texts are spread over
the cows so the whole run stays around a thousand cowsay processes.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import string
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.cowsay import CowLibrary, parse_cow, render

DEBIAN_COWS = Path("/usr/share/cowsay/cows")
COWSAY = shutil.which("cowsay", path="/usr/games") or shutil.which("cowsay")
COWTHINK = shutil.which("cowthink", path="/usr/games") or shutil.which("cowthink")
COW_FILES = sorted(p.name for p in DEBIAN_COWS.glob("*.cow")) if DEBIAN_COWS.is_dir() else []

EDGE_TEXTS = [
    "",
    "0",
    "hello",
    "Hello, World!",
    "w" * 39,
    "x" * 40,
    "y" * 41,
    "z" * 100,
    "multiple   spaces   between    words",
    "   leading spaces",
    "trailing spaces   ",
    " ",
    "   ",
    "tabs\there\t\tand\tthere",
    "\tleading tab",
    "line one\nline two\nline three",
    "a\n\nb",
    "a\n \n\tb",
    "\n\nstarts with blank lines",
    "ends with newlines\n\n\n",
    "single trailing newline\n",
    "blank\n\n\n\nlines\n\n",
    "punctuation $@\\%{} `~!#^&*()[]|;:'\",.<>?/ and $eyes @ARGV",
    "exactly thirty-nine characters long ok",
    "exactly forty characters long, ok then.",
    "exactly forty-one characters long, ok then",
    "word " * 20,
    "supercalifragilisticexpialidocious " * 4,
    "a" * 39 + " b",
    "a" * 45 + " " + "b" * 45,
    " " + "c" * 50,
    "0 0",
    "-n not an option",
    "{} {0} {eyes} %s %(x)s",
]


def _random_texts(count: int = 30) -> list[str]:
    rng = random.Random(1234)
    alphabet = string.ascii_letters + string.digits + string.punctuation
    texts = []
    for _ in range(count):
        length = rng.randint(0, 200)
        chars = [
            rng.choice(alphabet) if rng.random() < 0.7 else rng.choice("    \t\n")
            for _ in range(length)
        ]
        texts.append("".join(chars))
    return texts


TEXTS = EDGE_TEXTS + _random_texts()
FACES = [("oo", "  "), ("xx", "U "), ("$$", "  "), ("@@", "\\|"), ("{}", "%s"), ("\\\\", "'\"")]
FACES_PER_TEXT = 4  # each text is tried with 4 of the FACES (rotating), saying and thinking
CASES = [
    (text, think, *FACES[(t + f) % len(FACES)])
    for t, text in enumerate(TEXTS)
    for f in range(FACES_PER_TEXT)
    for think in (False, True)
]
COPIES = 2  # how many cows render each case


def _cases_for(cow_file: str) -> list[tuple[str, bool, str, str]]:
    """Spread CASES over the cows: case k goes to cows k, k+17, ... (mod cow count)."""
    index = COW_FILES.index(cow_file)
    count = len(COW_FILES)
    return [
        case
        for k, case in enumerate(CASES)
        if any((k + 17 * copy) % count == index for copy in range(COPIES))
    ]


def _literal_balloon(text: str, think: bool) -> str:
    """What the API promises for "" and "0", which cowsay itself reads from stdin."""
    balloon = " __\n<  >\n --\n" if text == "" else " ___\n< 0 >\n ---\n"
    return balloon.replace("<", "(").replace(">", ")") if think else balloon


def _run_binary(cow_path: str, eyes: str, tongue: str, think: bool, text: str) -> str:
    """The real program's output. For "" and "0", which cowsay reads from standard
    input (Perl-false argument), the text is fed there: `printf %s TEXT | cowsay`,
    which the API defines as its output for them (Perl's $. included)."""
    program = COWTHINK if think else COWSAY
    stdin = text in ("", "0")
    argv = [program, "-f", cow_path, "-e", eyes, "-T", tongue, *([] if stdin else ["--", text])]
    env = {k: v for k, v in os.environ.items() if k != "COWPATH"}
    result = subprocess.run(
        argv,
        input=text if stdin else "",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def binary() -> None:
    if not COWSAY or not COWTHINK:
        pytest.skip("the cowsay program (Debian package 'cowsay') is not installed")
    if not COW_FILES:
        pytest.skip(f"no Debian cow files in {DEBIAN_COWS}")


@pytest.fixture(scope="module")
def library(binary) -> CowLibrary:
    return CowLibrary.load([DEBIAN_COWS], logging.getLogger("test.cowsay.differential"))


def test_every_debian_cow_loads(library, caplog):
    caplog.set_level(logging.WARNING)
    reloaded = CowLibrary.load([DEBIAN_COWS], logging.getLogger("test.cowsay.reload"))
    assert not caplog.records
    assert reloaded.names() == sorted(name[: -len(".cow")] for name in COW_FILES)
    assert len(library.names()) == len(COW_FILES) >= 40


def test_cases_cover_every_text_several_times():
    runs: dict[str, int] = {}
    for cow_file in COW_FILES:
        for text, *_ in _cases_for(cow_file):
            runs[text] = runs.get(text, 0) + 1
    if COW_FILES:
        assert set(runs) == set(TEXTS)
        assert min(runs.values()) >= 4
        assert sum(runs.values()) <= 1500


@pytest.mark.parametrize("cow_file", COW_FILES or ["(no Debian cows installed)"])
def test_matches_cowsay_binary(cow_file, library):
    cow = library.get(cow_file[: -len(".cow")])
    assert cow is not None
    cases = _cases_for(cow_file)
    assert len(cases) >= 5
    with ThreadPoolExecutor(max_workers=4) as pool:
        expected = list(pool.map(lambda c: _run_binary(cow.path, c[2], c[3], c[1], c[0]), cases))
    for (text, think, eyes, tongue), want in zip(cases, expected, strict=True):
        got = render(cow, eyes, tongue, think, text)
        assert got == want, (
            f"{cow_file} think={think} eyes={eyes!r} tongue={tongue!r} text={text!r}"
        )


@pytest.mark.parametrize("text", ["", "0"])
@pytest.mark.parametrize("think", [False, True])
def test_stdin_texts_render_literally(text, think, library):
    """The API renders "" and "0" literally (cowsay would read standard input)."""
    cow = library.get("default")
    assert cow is not None
    got = render(cow, "oo", "  ", think, text)
    assert got.startswith(_literal_balloon(text, think))
    assert got == _run_binary(cow.path, "oo", "  ", think, text)


@pytest.mark.parametrize("cow_file", COW_FILES or ["(no Debian cows installed)"])
def test_stdin_texts_match_cowsay_for_every_cow(cow_file, library):
    """"" and "0" for every cow, saying and thinking, against `printf %s TEXT | cowsay`."""
    cow = library.get(cow_file[: -len(".cow")])
    assert cow is not None
    cases = [(text, think) for text in ("", "0") for think in (False, True)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        expected = list(pool.map(lambda c: _run_binary(cow.path, "oo", "  ", c[1], c[0]), cases))
    for (text, think), want in zip(cases, expected, strict=True):
        assert render(cow, "oo", "  ", think, text) == want, f"{cow_file} {think=} {text=}"


# Cow files exercising corners of Perl's here-document interpolation that the
# Debian cows do not all use; each must parse and match the real program.
SYNTHETIC_COWS = {
    "special-vars": (
        "$the_cow = <<EOC;\n"
        '$thoughts $. $; $, $/ $\\ $" $: $= $- $% $| $? $^ $~ $1\n'
        "$_ $a $version $progname $borg $V @_ @F @:x @:) $@ \\@ \\$\n"
        "EOC\n"
    ),
    "spaced-dollar": (
        "$the_cow = <<EOC;\n$thoughts $ eyes $\n  tongue $ {eyes} @ @9@mm$\n  .x\nEOC\n"
    ),
    "escapes": (
        '$the_cow = <<"EOC";\n'
        "$thoughts \\q\\y\\8\\1\\x41\\x{42}\\cA\\N{U+43}\\o{104}\\_\\\n"
        "\\t|\\e|\\a|\\0|\\101|\\E$eyes\\\\$tongue\\\\\n"
        "EOC\n"
    ),
    "single-quoted": "$the_cow = <<'EOC';\n$thoughts $eyes \\\\ \\@ \\$\nEOC\n",
    "braced": (
        "# comment\n$the_cow = <<EOC\n${thoughts}__${eyes}[0] ${eyes}{x} $eyes-> $eyes-x\nEOC\n"
    ),
    "preamble": (
        "my $x = 'ab' . \"[$eyes]\" x 2;\n"
        "$y = uc($tongue) . length $eyes;\n"
        "chop($x);\n"
        "$eyes = substr($x, 1, 4);\n"
        '$the_cow = <<"EOC" . "tail\\n";\n'
        " $thoughts $x $y $eyes\n"
        "EOC\n"
        "1;\n"
    ),
    "after": (
        '$the_cow = "$thoughts $eyes\\n";\n$the_cow .= qq{ ($tongue) {x}\\n};\n$eyes = "zz";\n'
    ),
    "pod-end": (
        "=pod\n\n$the_cow = 'no';\n\n=cut\n"
        "$the_cow = <<EOC;\n$thoughts $eyes\nEOC\n"
        "__END__\njunk $x[\n"
    ),
}


@pytest.mark.parametrize("name", sorted(SYNTHETIC_COWS))
def test_synthetic_cows_match_binary(name, binary, tmp_path):
    path = tmp_path / f"{name}.cow"
    path.write_text(SYNTHETIC_COWS[name])
    cow = parse_cow(name, SYNTHETIC_COWS[name], str(path))
    for think, eyes, tongue, text in [(False, "Oo", "U ", "hi"), (True, "ab", "cd", "a\n\nb"),
                                      (False, "oo", "  ", ""), (True, "oo", "  ", "0")]:
        got = render(cow, eyes, tongue, think, text)
        assert got == _run_binary(str(path), eyes, tongue, think, text), name
