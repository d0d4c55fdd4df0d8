"""The summary table of docs/benchmarks.md is generated from recorded rows, with verdicts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

RECORDED = """# Benchmarks

Every row comes from a run of the named command.

## sampling

Command: `python -m benchmarks.sampling --checkpoint X`

| config / machine | subjects | ratio | denoise_ratio | date |
|---|---|---|---|---|
| cpu-small (CPU Test, 2 cores) | 8 | 3.1 | 5.6 | 2026-11-26 |

## train_step

Command: `python -m benchmarks.train_step`

| stage / config (machine) | batch | plain_s | best | best_speedup | date |
|---|---|---|---|---|---|
| diffusion / paper (GPU Test H100) | 4 | 0.2 | tuned | 2.5 | 2026-11-26 |
| autoencoder / cpu-small (CPU Test, 2 cores) | 4 | 0.5 | bf16 | 1.3 | 2026-11-26 |

## demo

Command: `python -m benchmarks.demo`

| command | returncode | time_wall_s | tree_peak_rss_gib | within_target | machine | date |
|---|---|---|---|---|---|---|
| fedcmr4d demo --out OUT | 0 | 700.0 | 2.0 | False | CPU Test, 2 cores | 2026-11-26 |
"""


def summarise(doc: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.summary", "--doc", str(doc)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return doc.read_text()


def summary_lines(text: str, label: str) -> list[str]:
    head = text.split("<!-- summary:end -->")[0]
    return [line for line in head.splitlines() if line.startswith(f"| {label}")]


def test_summary_from_recorded_rows(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(RECORDED)
    text = summarise(doc)
    sampling = summary_lines(text, "3. sampling")
    assert len(sampling) == 1 and "3.1x end to end" in sampling[0] and "NOT met" in sampling[0]
    train = summary_lines(text, "1. train step")
    assert len(train) == 2
    assert "| met |" in train[0] and "GPU Test H100" in train[0]
    assert "not measured on one" in train[1]
    demo = summary_lines(text, "demo")
    assert len(demo) == 1 and "NOT met" in demo[0] and "700.0 s" in demo[0]
    assert "not recorded yet" in summary_lines(text, "7. quality")[0]
    for section in ("## sampling", "## train_step", "## demo"):  # sections kept, once each
        assert text.count(section) == 1
    assert summarise(doc) == text  # idempotent
