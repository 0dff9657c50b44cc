"""Unit tests for app.cowsay: balloon wrapping and borders, .cow parsing, loading
order, the bundled animals, wide characters and the render cache."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import wcwidth
from hypothesis import given, settings
from hypothesis import strategies as st

from app.cowsay import (
    BUNDLED_COW_DIR,
    SYSTEM_COW_DIRS,
    Cow,
    CowLibrary,
    CowParseError,
    Renderer,
    cow_search_path,
    parse_cow,
    render,
    wrap_text,
)

SIMPLE = parse_cow("simple", '$the_cow = <<"EOC";\n $thoughts\n  [$eyes]\n  ($tongue)\nEOC\n')


def balloon_of(output: str) -> list[str]:
    """The balloon lines of an output rendered with SIMPLE (its art is 3 lines)."""
    return output.splitlines()[:-3]


# ---------------------------------------------------------------------- wrapping


def test_short_text_is_one_line():
    assert wrap_text("hello") == ["hello"]


def test_lines_hold_at_most_39_columns():
    lines = wrap_text("lorem ipsum dolor sit amet " * 10)
    assert len(lines) > 3
    assert all(len(line) <= 39 for line in lines)
    assert " ".join(lines).split() == ("lorem ipsum dolor sit amet " * 10).split()


def test_39_and_40_character_words():
    assert wrap_text("w" * 39) == ["w" * 39]
    assert wrap_text("x" * 40) == ["x" * 39, "x"]


def test_long_words_are_cut():
    assert wrap_text("z" * 100) == ["z" * 39, "z" * 39, "z" * 22]
    assert wrap_text("a" * 45 + " " + "b" * 3) == ["a" * 39, "a" * 6 + " bbb"]


def test_break_at_last_space_that_fits():
    text = "a" * 30 + " " + "b" * 8 + " " + "c" * 5
    assert wrap_text(text) == ["a" * 30 + " " + "b" * 8, "c" * 5]
    assert wrap_text("a" * 39 + " b") == ["a" * 39, "b"]


def test_runs_of_spaces_tabs_and_newlines_become_one_space():
    assert wrap_text("a   b\t\tc\nd \t e") == ["a b c d e"]


def test_leading_and_trailing_whitespace_is_kept_as_one_space():
    assert wrap_text("   leading") == [" leading"]
    assert wrap_text("trailing   ") == ["trailing "]
    assert wrap_text("newline\n") == ["newline "]


def test_leading_space_before_a_long_word_gives_an_empty_line():
    assert wrap_text(" " + "c" * 50) == ["", "c" * 39, "c" * 11]


def test_blank_lines_separate_paragraphs():
    assert wrap_text("a\n\nb") == ["a", "", "b"]
    assert wrap_text("a\n \t\n  b") == ["a", "", "b"]
    assert wrap_text("\n\nb") == ["", "", "b"]
    assert wrap_text("a\n\n\n") == ["a"]


def test_whitespace_only_text_has_no_lines():
    assert wrap_text("") == []
    assert wrap_text(" ") == []
    assert wrap_text("\n\n \t") == []


# ---------------------------------------------------------------------- balloons


def test_one_line_balloon():
    assert render(SIMPLE, "oo", "  ", False, "hello") == (
        " _______\n< hello >\n -------\n \\\n  [oo]\n  (  )\n"
    )


def test_several_line_balloon_borders():
    lines = balloon_of(render(SIMPLE, "oo", "  ", False, "one\n\ntwo three"))
    assert lines == [
        " ___________",
        "/ one       \\",
        "|           |",
        "\\ two three /",
        " -----------",
    ]
    two = balloon_of(render(SIMPLE, "oo", "  ", False, "a\n\n"))
    assert two == [" ___", "< a >", " ---"]


def test_think_uses_parentheses_and_o():
    out = render(SIMPLE, "oo", "  ", True, "one\n\ntwo")
    assert out == (" _____\n( one )\n(     )\n( two )\n -----\n o\n  [oo]\n  (  )\n")
    assert render(SIMPLE, "oo", "  ", True, "hm").startswith(" ____\n( hm )\n ----\n o\n")


def test_say_uses_backslash_thoughts():
    assert "\n \\\n  [oo]" in render(SIMPLE, "oo", "  ", False, "hi")


def test_empty_text_and_zero():
    assert render(SIMPLE, "oo", "  ", False, "") == " __\n<  >\n --\n \\\n  [oo]\n  (  )\n"
    assert render(SIMPLE, "oo", "  ", True, "").startswith(" __\n(  )\n --\n o\n")
    assert render(SIMPLE, "oo", "  ", False, "0").startswith(" ___\n< 0 >\n ---\n")


CALVIN_LIKE = parse_cow("calvin-like", '$the_cow = <<"EOC";\n $thoughts\n $..MMMQzna,\nEOC\n')
CALVIN = Path("/usr/share/cowsay/cows/calvin.cow")


@pytest.mark.parametrize("text, line", [("", "0"), ("0", "1"), ("a", ""), ("00", ""),
                                        (" ", ""), ("0\n", "")])
def test_input_line_counter_is_what_cowsay_prints(text, line):
    """Perl's $. : cowsay reads stdin for "" and "0" (0 and 1 lines), else none."""
    assert render(CALVIN_LIKE, "oo", "  ", False, text).endswith(f"\n {line}.MMMQzna,\n")
    assert render(CALVIN_LIKE, "oo", "  ", True, text).endswith(f"\n {line}.MMMQzna,\n")


@pytest.mark.skipif(not CALVIN.is_file(), reason="Debian's calvin.cow is not installed")
def test_calvin_prints_the_input_line_counter():
    calvin = parse_cow("calvin", CALVIN.read_text(), str(CALVIN))
    for text, line in (("", "0"), ("0", "1"), ("a", "")):
        art = render(calvin, "oo", "  ", False, text).splitlines()
        assert f"             {line}.MMMMMMMMMMMQzna," in art, text


def test_eyes_and_tongue_substitution():
    out = render(SIMPLE, "xx", "U ", False, "hi")
    assert out.endswith(" \\\n  [xx]\n  (U )\n")
    # Only the first two characters are used, as with cowsay -e / -T.
    assert render(SIMPLE, "abcdef", "uvw", False, "hi").endswith("  [ab]\n  (uv)\n")
    # Braces and percent signs are data, not template syntax.
    assert render(SIMPLE, "{}", "%s", False, "{eyes}").endswith("  [{}]\n  (%s)\n")


def test_output_ends_with_newline():
    assert render(SIMPLE, "oo", "  ", False, "hi").endswith("\n")


# ---------------------------------------------------------------------- parsing


def art(source: str, eyes: str = "oo", tongue: str = "U ", think: bool = False) -> str:
    """Only the animal part of a render of ``source``."""
    out = render(parse_cow("t", source), eyes, tongue, think, "x")
    return out.split("\n", 3)[3]


def test_parse_returns_cow_with_template():
    cow = parse_cow("name", "$the_cow = <<EOC;\n$eyes\nEOC\n", "/some/where/name.cow")
    assert isinstance(cow, Cow)
    assert (cow.name, cow.path) == ("name", "/some/where/name.cow")
    assert "{eyes}" in cow.template


def test_comments_and_heredoc_forms():
    body = "$thoughts $eyes $tongue\n"
    expected = "\\ oo U \n"
    assert art(f"## comment\n# another\n$the_cow = <<EOC;\n{body}EOC\n") == expected
    assert art(f'$the_cow = <<"EOC";\n{body}EOC\n') == expected
    assert art(f"$the_cow = << EOC;\n{body}EOC\n") == expected
    assert art(f"$the_cow = <<EOF\n{body}EOF\n") == expected  # no semicolon, other name
    assert art(f"$the_cow = <<~EOC;\n    {body}    EOC\n") == expected
    assert art(f"$the_cow = <<EOC;\n{body}EOC\n\n1;\n") == expected


def test_single_quoted_heredoc_does_not_interpolate():
    assert art("$the_cow = <<'EOC';\n$eyes \\\\ \\@\nEOC\n") == "$eyes \\\\ \\@\n"


def test_backslash_escapes():
    assert art('$the_cow = <<"EOC";\n\\\\ \\@ \\$ \\" \\_ \\x41 \\t\nEOC\n') == '\\ @ $ " _ A \t\n'


def test_braced_variables_and_undefined_ones():
    assert art("$the_cow = <<EOC;\n${eyes}__ $eyes__ $nothing. @nothing.\nEOC\n") == "oo__  . .\n"


def test_literal_braces_in_art():
    assert art("$the_cow = <<EOC;\n{$eyes} {0} {}\nEOC\n") == "{oo} {0} {}\n"


def test_preamble_variables():
    three_eyes = "$extra = chop($eyes);\n$eyes .= ($extra x 2);\n$the_cow = <<EOC;\n($eyes)\nEOC\n"
    assert art(three_eyes, eyes="ox") == "(oxx)\n"
    assert art('my $mouth = "<$tongue>";\n$the_cow = <<EOC;\n$mouth\nEOC\n') == "<U >\n"
    assert art('$the_cow = "$eyes\\n";\n$the_cow .= \'end\' . "\\n";\n') == "oo\nend\n"


@pytest.mark.parametrize(
    "source",
    [
        "",
        "# only a comment\n",
        "$the_cow = <<EOC;\nno terminator\n",
        "$the_cow = <<EOC;\n$eyes[0]\nEOC\n",
        "$the_cow = <<EOC;\n$0\nEOC\n",
        "$the_cow = <<EOC;\n@ARGV\nEOC\n",
        "$the_cow = <<EOC;\n$$\nEOC\n",
        "$the_cow = <<EOC;\ntrailing $\nEOC\n",
        "$x = `rm -rf /`;\n$the_cow = <<EOC;\nx\nEOC\n",
        "$x = $eyes + 1;\n$the_cow = <<EOC;\n$x\nEOC\n",
        "system('true');\n$the_cow = <<EOC;\nx\nEOC\n",
        "$the_cow = <<EOC;\n\\Uloud\\E\nEOC\n",
        '$the_cow = "\\x{D800}\\x{110000}";\n',
        "$the_cow = " + "(" * 5000 + "1" + ")" * 5000 + ";\n",
    ],
)
def test_unparseable_sources_raise(source):
    with pytest.raises(CowParseError):
        parse_cow("bad", source)
    assert issubclass(CowParseError, ValueError)


# ---------------------------------------------------------------------- loading


def write_cow(directory: Path, name: str, art_line: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.cow"
    path.write_text(f"$the_cow = <<EOC;\n{art_line}\nEOC\n")
    return path


def test_unparseable_file_is_skipped_with_one_warning(tmp_path, caplog):
    write_cow(tmp_path, "good", "$eyes")
    (tmp_path / "broken.cow").write_text("$the_cow = <<EOC;\nnever ends\n")
    (tmp_path / "notes.txt").write_text("not a cow")
    logger = logging.getLogger("test.cowsay.load")
    with caplog.at_level(logging.WARNING, logger="test.cowsay.load"):
        library = CowLibrary.load([tmp_path], logger)
    assert library.names() == ["good"]
    assert library.get("broken") is None
    records = [r for r in caplog.records if r.name == "test.cowsay.load"]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert "broken.cow" in records[0].getMessage()


def test_first_file_of_a_name_wins(tmp_path):
    first, second, third = tmp_path / "one", tmp_path / "two", tmp_path / "three"
    write_cow(first, "shared", "FIRST")
    write_cow(second, "shared", "SECOND")
    write_cow(second, "only-two", "TWO")
    write_cow(third, "shared", "THIRD")
    library = CowLibrary.load([first, second, third, tmp_path / "missing"], logging.getLogger("t"))
    assert library.names() == ["only-two", "shared"]
    assert library.get("shared").path == str(first / "shared.cow")
    assert render(library.get("shared"), "oo", "  ", False, "x").endswith("FIRST\n")


def test_names_are_sorted_and_case_sensitive(tmp_path):
    for name in ("zebra", "Apple", "mango"):
        write_cow(tmp_path, name, name)
    library = CowLibrary.load([tmp_path], logging.getLogger("t"))
    assert library.names() == ["Apple", "mango", "zebra"]
    assert library.get("apple") is None
    assert library.get("Apple") is not None


def test_cowpath_precedes_system_and_bundled(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_cow(a, "default", "MINE")
    path = cow_search_path(f"{a}::{b}:", bundled_dir=tmp_path / "bundled")
    system = [Path(d) for d in SYSTEM_COW_DIRS if Path(d).is_dir()]
    assert path == [a, b, *system, tmp_path / "bundled"]
    library = CowLibrary.load(path, logging.getLogger("t"))
    assert library.get("default").path == str(a / "default.cow")


def test_search_path_without_cowpath_ends_with_bundled():
    path = cow_search_path(None)
    assert path[-1] == BUNDLED_COW_DIR
    assert cow_search_path("")[-1] == BUNDLED_COW_DIR
    assert all(p.is_dir() for p in path[:-1])


# ---------------------------------------------------------------------- bundled animals


@pytest.fixture(scope="module")
def bundled() -> CowLibrary:
    return CowLibrary.load([BUNDLED_COW_DIR], logging.getLogger("test.cowsay.bundled"))


def test_bundled_animals(bundled):
    files = sorted(BUNDLED_COW_DIR.glob("*.cow"))
    assert len(files) >= 6
    assert len(bundled.names()) == len(files)
    assert "default" in bundled.names()


def test_every_bundled_animal_renders(bundled):
    for name in bundled.names():
        cow = bundled.get(name)
        source = Path(cow.path).read_text()
        assert "$thoughts" in source
        for think in (False, True):
            out = render(cow, "Qq", "Zz", think, "hello")
            assert out.endswith("\n")
            assert "Qq" in out, name
            assert ("o" if think else "\\") in out.split("\n", 3)[3]


def test_bundled_animals_are_not_system_copies(bundled):
    system = CowLibrary.load(
        [Path(d) for d in SYSTEM_COW_DIRS], logging.getLogger("test.cowsay.system")
    )
    for name in system.names():
        for mine in bundled.names():
            theirs = render(system.get(name), "oo", "  ", False, "x")
            assert render(bundled.get(mine), "oo", "  ", False, "x") != theirs


# ---------------------------------------------------------------------- wide characters


def text_lines(output: str) -> list[str]:
    """The bordered text lines of a SIMPLE balloon (without top and bottom rules)."""
    return balloon_of(output)[1:-1]


@pytest.mark.parametrize(
    "text",
    [
        "日本語のテキストはとても長いので、吹き出しの中で折り返されるべきです。さらに続きます。",
        "party 🎉🎉 time 🐄 moo 🐄🐄🐄 and 👨‍👩‍👧 family with café é naïve 🎉🎉🎉🎉🎉🎉",
        "mixed 中文 and ascii words in one fairly long balloon text here",
    ],
)
def test_wide_characters_keep_the_balloon_aligned(text):
    for think in (False, True):
        out = render(SIMPLE, "oo", "  ", think, text)
        lines = text_lines(out)
        assert len(lines) >= 2
        widths = {wcwidth.wcswidth(line) for line in lines}
        assert len(widths) == 1, lines
        width = widths.pop()
        assert width <= 39 + 4
        top, bottom = balloon_of(out)[0], balloon_of(out)[-1]
        assert wcwidth.wcswidth(top) == wcwidth.wcswidth(bottom) == width - 1
        # The right border sits in the last column of every line.
        assert all(line[-1] in ")>|/\\" for line in lines)
        assert all(wcwidth.wcswidth(line[:-1]) == width - 1 for line in lines)


def test_wide_characters_wrap_by_display_width():
    lines = wrap_text("字" * 30)
    assert lines == ["字" * 19, "字" * 11]


# ---------------------------------------------------------------------- cache


def test_renderer_caches_identical_input(bundled):
    renderer = Renderer(bundled, max_entries=8)
    assert renderer.library is bundled
    first = renderer.render("default", "oo", "  ", False, "cache me")
    hits, misses = renderer.cache_stats()
    second = renderer.render("default", "oo", "  ", False, "cache me")
    assert second == first
    assert renderer.cache_stats() == (hits + 1, misses)
    renderer.render("default", "oo", "  ", True, "cache me")
    assert renderer.cache_stats() == (hits + 1, misses + 1)


def test_renderer_matches_render_and_rejects_unknown_animals(bundled):
    renderer = Renderer(bundled)
    assert renderer.render("default", "xx", "U ", False, "hi") == render(
        bundled.get("default"), "xx", "U ", False, "hi"
    )
    with pytest.raises(KeyError):
        renderer.render("no-such-animal", "oo", "  ", False, "hi")


def test_renderer_caches_are_per_instance(bundled):
    one, two = Renderer(bundled), Renderer(bundled)
    one.render("default", "oo", "  ", False, "x")
    assert two.cache_stats() == (0, 0)


@given(text=st.text(alphabet=st.sampled_from(" abc~!xyz0"), max_size=200),
       limit=st.integers(1, 45))
@settings(max_examples=2000, deadline=None)
def test_printable_ascii_wraps_as_the_general_path(text, limit):
    """The fast path for printable ASCII cuts exactly where the grapheme walk cuts."""
    from app.cowsay.balloon import _wrap_any, _wrap_printable_ascii

    assert _wrap_printable_ascii(text, limit) == _wrap_any(text, limit)


def test_renderer_counts_each_threads_misses():
    import threading

    renderer = Renderer(CowLibrary.load([BUNDLED_COW_DIR], logging.getLogger("t")), 16)
    for text in ("a", "b", "a"):
        renderer.render("default", "oo", "  ", False, text)
    seen: list[int] = []
    worker = threading.Thread(target=lambda: (renderer.render("default", "oo", "  ", False, "c"),
                                              seen.append(renderer.take_thread_misses())))
    worker.start()
    worker.join()
    assert seen == [1]
    assert renderer.take_thread_misses() == 2 and renderer.take_thread_misses() == 0


@pytest.mark.parametrize("opening", ["(", "uc("])
def test_deep_nesting_is_refused_whatever_the_recursion_limit(opening):
    """The parser's own bound refuses absurd nesting, also where a library in the same
    process raised Python's recursion limit (the suite's fuzzers do)."""
    source = "$the_cow = " + opening * 3000 + '"x"' + ")" * 3000 + ";\n"
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    try:
        with pytest.raises(CowParseError, match="nested deeper"):
            parse_cow("deep", source)
    finally:
        sys.setrecursionlimit(limit)
