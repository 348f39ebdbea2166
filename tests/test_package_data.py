"""Every file the package needs at run time is in its wheel: pyproject's package-data
covers each non-Python file under src/event_analytics (a page added without its pattern
served 500 from the container image, whose install is not editable)."""

from __future__ import annotations

import tomllib
from fnmatch import fnmatchcase
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "event_analytics"


def test_package_data_covers_every_non_python_file() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["event_analytics"]
    files = [
        p.relative_to(PACKAGE)
        for p in PACKAGE.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    ]
    assert files, "no data files found: is the package where this test looks?"
    missing = [str(f) for f in files if not any(_matches(f, p) for p in patterns)]
    assert not missing, f"add to [tool.setuptools.package-data]: {missing}"


def _matches(path: Path, pattern: str) -> bool:
    """setuptools' glob, relative to the package: ``*`` does not cross ``/``."""
    parts = pattern.split("/")
    return len(parts) == len(path.parts) and all(
        fnmatchcase(name, glob) for name, glob in zip(path.parts, parts, strict=True)
    )
