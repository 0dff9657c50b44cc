"""The development token secret: generated once, kept under DATA_DIR, owner-only."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def development_secret(data_dir: Path) -> tuple[str, bool]:
    """The stored secret, creating it when missing; returns (secret, created_now)."""
    path = data_dir / "user_secret"
    if path.exists():
        return path.read_text().strip(), False
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another instance created it first
        return path.read_text().strip(), False
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value, True
