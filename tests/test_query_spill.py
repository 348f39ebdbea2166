"""Where a query engine spills past its memory limit: a directory of its own under the
one it is given, never DuckDB's default (``.tmp`` in the working directory, which is how
spill files of a test run once ended up committed), and gone when it closes."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from event_analytics.analytics.pool import QueryEngine
from event_analytics.config import Settings

# A sort of two million rows in a 20 MB limit: it must spill (about 32 MB of keys).
SPILLING = (
    "SELECT count(*), max(x) FROM (SELECT range AS x FROM range(2000000) ORDER BY hash(range))"
)


def test_a_spilling_query_writes_under_the_engines_own_directory_removed_on_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    spill = Settings(data_dir=tmp_path / "data").spill_path
    engine = QueryEngine(memory_limit="20MB", threads=1, spill_dir=spill)
    try:
        ((own,),) = engine.fetch("SELECT current_setting('temp_directory')")
        assert Path(own).parent == spill
        assert engine.fetch(SPILLING) == [(2_000_000, 1_999_999)]
        spilled = [p for p in Path(own).iterdir() if p.is_file()]
        assert spilled, "the query did not spill: the test proves nothing"
        second = QueryEngine(memory_limit="20MB", threads=1, spill_dir=spill)
        ((other,),) = second.fetch("SELECT current_setting('temp_directory')")
        second.close()
        assert other != own  # two engines (processes) never share one
    finally:
        engine.close()
    assert list(spill.iterdir()) == []
    assert os.listdir(cwd) == []


def test_without_a_directory_it_spills_under_the_systems_temporary_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    engine = QueryEngine()
    ((own,),) = engine.fetch("SELECT current_setting('temp_directory')")
    engine.close()
    assert Path(own).parent == tmp_path
    assert not Path(own).exists()


def test_a_command_that_never_closes_its_engine_leaves_no_directory(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    code = (
        "import sys, pathlib; from event_analytics.analytics.pool import QueryEngine; "
        "e = QueryEngine(spill_dir=pathlib.Path(sys.argv[1])); e.fetch('SELECT 1'); "
        "print(len(list(pathlib.Path(sys.argv[1]).iterdir())))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(spill)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"  # it had its directory while it ran
    assert list(spill.iterdir()) == []
