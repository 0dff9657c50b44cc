"""The cow library: every animal on the search path, parsed once at start."""

from __future__ import annotations

import logging
from pathlib import Path

from app.cowsay.perl import Cow, CowParseError, parse_cow

#: Directories where cowsay packages install their animals (searched after COWPATH).
SYSTEM_COW_DIRS: tuple[str, ...] = (
    "/usr/share/cowsay/cows",
    "/usr/local/share/cowsay/cows",
    "/usr/share/cows",
    "/usr/local/share/cows",
)
#: The animals shipped with the service (searched last): our own drawings.
BUNDLED_COW_DIR: Path = Path(__file__).resolve().parent / "cows"


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def cow_search_path(cowpath: str | None, bundled_dir: Path | None = None) -> list[Path]:
    """COWPATH dirs (colon separated, empty entries ignored), then system cowsay dirs that
    exist, then the bundled app/cowsay/cows."""
    result: list[Path] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        try:
            key = path.resolve()
        except OSError:
            key = path
        if key not in seen:
            seen.add(key)
            result.append(path)

    for entry in (cowpath or "").split(":"):
        if entry:
            add(Path(entry))
    for entry in SYSTEM_COW_DIRS:
        if Path(entry).is_dir():
            add(Path(entry))
    add(bundled_dir if bundled_dir is not None else BUNDLED_COW_DIR)
    return result


def _read_source(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # old cow files predate UTF-8


class CowLibrary:
    """All animals found on a search path, parsed once."""

    def __init__(self, cows: dict[str, Cow]) -> None:
        self._cows = dict(cows)
        self._names = sorted(self._cows)

    @classmethod
    def load(cls, search_path: list[Path], logger: logging.Logger) -> CowLibrary:
        """Load every ``*.cow`` file; the first parseable file of a name wins.

        Files that cannot be read or parsed are skipped with one warning each.
        """
        cows: dict[str, Cow] = {}
        for directory in search_path:
            try:
                files = sorted(p for p in Path(directory).iterdir() if p.name.endswith(".cow"))
            except OSError:
                continue  # missing or unreadable directory
            for file in files:
                name = file.name[: -len(".cow")]
                if not name or name in cows or not file.is_file():
                    continue
                try:
                    cows[name] = parse_cow(name, _read_source(file), str(file))
                except (OSError, CowParseError) as exc:
                    logger.warning("skipping cow file %s: %s", file, exc)
        return cls(cows)

    def names(self) -> list[str]:
        """Sorted animal names."""
        return list(self._names)

    def get(self, name: str) -> Cow | None:
        """The animal named exactly ``name`` (file name without ``.cow``), or None."""
        return self._cows.get(name)

    def __len__(self) -> int:
        return len(self._cows)

    def __contains__(self, name: object) -> bool:
        return name in self._cows
