"""``benchmarks.common.record`` keeps each section's table aligned with its script's columns."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

# Loaded by path: opacus installs a top-level ``benchmarks`` package of its own into
# site-packages, which would shadow this repository's folder on a plain import.
_SPEC = importlib.util.spec_from_file_location(
    "fedcmr4d_benchmarks_common", Path(__file__).resolve().parents[2] / "benchmarks" / "common.py"
)
assert _SPEC is not None and _SPEC.loader is not None
common = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(common)


def _table(text: str, section: str) -> list[list[str]]:
    block = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in block.splitlines()
        if line.startswith("|")
    ]


def test_rows_replace_by_key_and_a_new_column_set_replaces_the_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = tmp_path / "benchmarks.md"
    monkeypatch.setattr(common, "DOC", doc)
    old = ["config", "seconds", "date"]
    common.record("speed", "tiny", old, {"seconds": 1.5, "date": "d1"}, "cmd --old")
    common.record("speed", "paper", old, {"seconds": 9.0, "date": "d1"}, "cmd --old")
    common.record("speed", "tiny", old, {"seconds": 1.2, "date": "d2"}, "cmd --old")
    common.record("other", "x", ["case", "n"], {"n": 3}, "cmd other")
    rows = _table(doc.read_text(), "speed")
    assert rows[0] == old and rows[2:] == [["tiny", "1.2", "d2"], ["paper", "9.0", "d1"]]

    new = ["config", "seconds", "bytes", "date"]
    common.record("speed", "tiny", new, {"seconds": 1.1, "bytes": 7, "date": "d3"}, "cmd --new")
    text = doc.read_text()
    rows = _table(text, "speed")
    assert rows[0] == new and rows[1] == ["---"] * 4
    assert rows[2:] == [["tiny", "1.1", "7", "d3"]]  # the old-layout "paper" row is gone
    assert "Command: `cmd --new`" in text and "cmd --old" not in text
    assert _table(text, "other")[2:] == [["x", "3"]]  # other sections untouched
