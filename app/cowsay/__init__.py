"""Cowsay engine: reads classic ``.cow`` files and renders balloons exactly as cowsay 3.03 does.

In the order a render flows: `perl` parses ``.cow`` files into templates, `library` finds
and loads them, `balloon` wraps the text and draws the balloon and the animal, `cache` keeps
what was rendered. No Perl runs on a request.
"""

from app.cowsay.balloon import BALLOON_WIDTH, render, wrap_text
from app.cowsay.cache import Renderer
from app.cowsay.library import BUNDLED_COW_DIR, SYSTEM_COW_DIRS, CowLibrary, cow_search_path
from app.cowsay.perl import Cow, CowParseError, parse_cow

__all__ = [
    "BALLOON_WIDTH",
    "BUNDLED_COW_DIR",
    "SYSTEM_COW_DIRS",
    "Cow",
    "CowLibrary",
    "CowParseError",
    "Renderer",
    "cow_search_path",
    "parse_cow",
    "render",
    "wrap_text",
]
