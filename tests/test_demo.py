"""``fedcmr4d demo`` end to end through the real CLI (smaller than the default run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from fedcmr4d.release.verify import verify_release


def _processes_with(marker: str) -> list[int]:
    """Live processes whose environment carries ``marker`` (children inherit it)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker.encode() in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_demo_runs_every_step_and_leaves_no_process(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    cmd = [
        sys.executable,
        "-m",
        "fedcmr4d",
        "demo",
        "--quick",
        "--out",
        str(out),
        "--subjects",
        "3",
        "--synthetic",
        "2",
        "--rounds-autoencoder",
        "1",
        "--rounds-diffusion",
        "1",
        "--no-evaluate",
    ]
    marker = f"FEDCMR4D_DEMO_TEST={uuid.uuid4().hex}"
    key, value = marker.split("=")
    env = {**os.environ, key: value}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    deadline = time.monotonic() + 30  # Ray's workers exit shortly after shutdown
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(1)
    assert _processes_with(marker) == []
    for step in ("[1/4]", "[2/4]", "[3/4]", "3/3 sites accepted", "audit:"):
        assert step in run.stdout
    fed = out / "federation"
    rows = [json.loads(line) for line in (fed / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["sites_accepted"]) for r in rows] == [
        ("autoencoder", 3),
        ("diffusion", 3),
        ("segmenter", 3),  # the federated segmenter that labels the sampled cohort
    ]
    assert (fed / "segmenter" / "segmenter.safetensors").is_file()
    audit = json.loads((fed / "audit.json").read_text())
    synthetic = json.loads((fed / "synthetic" / "cohort.json").read_text())
    labels = synthetic["provenance"]["labels"]
    assert labels["n_labelled"] == 2 and labels["segmenter_train_subjects"] > 0  # before the audit
    assert all(f"{sid}/labels.nii.gz" in audit["files"] for sid in synthetic["subjects"])
    if audit["passed"]:
        assert verify_release(out / "release", out / "keys" / "signing.pub").n_files > 0
        assert (out / "release" / "cohort" / synthetic["subjects"][0] / "labels.nii.gz").is_file()
        assert "verified" in run.stdout
    else:
        assert "release refused" in run.stdout and not (out / "release").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "not empty" in again.stderr


def test_demo_help_names_the_steps() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "fedcmr4d", "demo", "--help"], capture_output=True, text=True
    )
    assert run.returncode == 0 and "Simulation Engine" in run.stdout
    assert "--quick" in run.stdout and "--quality" in run.stdout


def test_default_demo_is_the_demo_recipe_and_quick_the_tiny_check(tmp_path: Path) -> None:
    from fedcmr4d.config import load_config
    from fedcmr4d.federated.demo import DemoOptions

    quick = DemoOptions(out=tmp_path, quick=True, synthetic_subjects=2).resolved()
    assert (quick.config, quick.subjects_per_site, quick.synthetic_subjects) == ("tiny", 6, 2)
    default = DemoOptions(out=tmp_path).resolved()
    cfg = load_config("demo")
    assert default.config == "demo" and cfg.name == "demo"
    assert (default.subjects_per_site, default.synthetic_subjects) == (96, 24)
    assert default.reference_subjects is not None and default.reference_subjects >= 24
    # what the recipe's figures in docs/models.md rest on
    assert cfg.train.autoencoder.augment and cfg.autoencoder.quantizer == "fsq"
    assert (cfg.diffusion.prediction, cfg.diffusion.decode_latents) == ("sample", "clamp")
