"""The render cache: each distinct (animal, eyes, tongue, think, text) rendered once."""

from __future__ import annotations

import functools
import threading
from json.encoder import encode_basestring as json_string

from app.cowsay.balloon import render
from app.cowsay.library import CowLibrary


class Renderer:
    """Bounded LRU cache around render(), keyed by (animal name, eyes, tongue, think, text).

    Each entry keeps the output twice: as text, and as the JSON string
    literal a response embeds (quoted and escaped exactly as
    ``json.dumps(output, ensure_ascii=False)`` writes it), so that reading a
    conversation does not escape the same art again on every request.
    """

    def __init__(self, library: CowLibrary, max_entries: int = 4096, tracing=None) -> None:
        self._library = library
        self._tracing = tracing  # app.platform.tracing.Tracing: a span per render (a miss)
        self._cached = functools.lru_cache(maxsize=max_entries)(self._render)
        self._thread = threading.local()

    def _render(self, animal: str, eyes: str, tongue: str, think: bool, text: str
                ) -> tuple[str, str]:
        cow = self._library.get(animal)
        if cow is None:
            raise KeyError(animal)
        self._thread.misses = getattr(self._thread, "misses", 0) + 1
        if self._tracing is None:
            output = render(cow, eyes, tongue, think, text)
        else:
            with self._tracing.span("cowsay.render", {"saypi.cowsay.animal": animal,
                                                      "saypi.cowsay.think": think,
                                                      "saypi.cowsay.text_length": len(text)}):
                output = render(cow, eyes, tongue, think, text)
        return output, json_string(output)

    def _entry(self, animal: str, eyes: str, tongue: str, think: bool, text: str
               ) -> tuple[str, str]:
        if self._library.get(animal) is None:
            raise KeyError(animal)
        return self._cached(animal, eyes, tongue, bool(think), text)

    def render(self, animal: str, eyes: str, tongue: str, think: bool, text: str) -> str:
        """Rendered output for ``animal``; raises KeyError if the animal is unknown."""
        return self._entry(animal, eyes, tongue, think, text)[0]

    def render_json(self, animal: str, eyes: str, tongue: str, think: bool, text: str) -> str:
        """The rendered output as a JSON string literal; raises KeyError as render() does."""
        return self._entry(animal, eyes, tongue, think, text)[1]

    def take_thread_misses(self) -> int:
        """Renders this thread has missed the cache for since its last call (then zero)."""
        missed = getattr(self._thread, "misses", 0)
        if missed:
            self._thread.misses = 0
        return missed

    def cache_stats(self) -> tuple[int, int]:
        """(hits, misses) of the render cache."""
        info = self._cached.cache_info()
        return info.hits, info.misses

    @property
    def library(self) -> CowLibrary:
        return self._library
