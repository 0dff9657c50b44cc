"""deploy/haproxy/haproxy.cfg as the fleet renders it: its template server line exactly once."""

from __future__ import annotations

import pytest

from harness.haproxy import Backend, render_config


def test_rendering_needs_exactly_one_template_line():
    with pytest.raises(ValueError, match="exactly one"):
        render_config([Backend("saypi1", "127.0.0.1:1")], template="global\n")
    with pytest.raises(ValueError, match="unusable"):
        render_config([Backend("saypi1", "127.0.0.1:1 backup")])
    with pytest.raises(ValueError, match="at least one"):
        render_config([])
