"""End to end through the real CLI: train both stages on a tiny phantom, resume, sample."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import pytest

from fedcmr4d.data.cohort import open_cohort
from fedcmr4d.train.checkpoint import load_checkpoint

Run = Callable[..., tuple[int, str]]


@pytest.mark.slow
def test_train_resume_and_sample(tmp_path: Path, tiny_cohort: Path, run_cli: Run) -> None:
    ae, ldm, syn = tmp_path / "ae", tmp_path / "ldm", tmp_path / "syn"
    code, out = run_cli(
        "train", "autoencoder", "--config", "tiny", "--data", tiny_cohort, "--out", ae,
        "--set", "train.autoencoder.steps=2", "--quiet",
    )  # fmt: skip
    assert code == 0, out
    assert load_checkpoint(ae).meta["step"] == 2
    code, out = run_cli(
        "train", "autoencoder", "--config", "tiny", "--data", tiny_cohort, "--out", ae,
        "--resume", "--quiet",
    )  # fmt: skip
    assert code == 0, out
    meta = load_checkpoint(ae).meta
    assert meta["step"] == 4 and "psnr" in meta["holdout_metrics"]
    rows = (ae / "curves.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and [r.split(",")[0] for r in rows[1:]] == ["2", "4"]
    assert (ae / "curves.png").stat().st_size > 1000

    code, out = run_cli(
        "train", "diffusion", "--config", "tiny", "--data", tiny_cohort, "--autoencoder", ae,
        "--out", ldm, "--quiet",
    )  # fmt: skip
    assert code == 0, out
    meta = load_checkpoint(ldm).meta
    assert meta["autoencoder"]["path"] == "../ae" and meta["latent_scale"] > 1

    code, out = run_cli(
        "sample", "--checkpoint", ldm, "--subjects", "2", "--out", syn, "--seed", "3", "--quiet"
    )
    assert code == 0, out
    assert json.loads(out.strip().splitlines()[-1])["subjects"] == 2
    cohort = open_cohort(syn)
    assert cohort.subject_ids == ["synth0000", "synth0001"]
    image = nib.load(str(syn / "synth0000" / "cine.nii.gz"))
    assert image.shape == (32, 32, 6, 16)
    assert tuple(round(float(z), 3) for z in image.header.get_zooms()[:3]) == (1.0, 1.0, 10.0)
    assert cohort.index["provenance"]["seed"] == 3


def test_cli_errors_have_exit_codes(tmp_path: Path, tiny_cohort: Path, run_cli: Run) -> None:
    code, out = run_cli(
        "train", "autoencoder", "--config", "tiny", "--data", tiny_cohort, "--out", tmp_path,
        "--set", "autoencoder.nonsense=1",
    )  # fmt: skip
    assert code == 2 and "autoencoder.nonsense" in out
    code, out = run_cli(
        "train", "autoencoder", "--config", "tiny", "--data", tmp_path / "none", "--out", tmp_path
    )
    assert code == 3 and "cohort.json" in out
    code, out = run_cli(
        "train", "diffusion", "--config", "tiny", "--data", tiny_cohort, "--autoencoder",
        tmp_path / "missing", "--out", tmp_path / "o",
    )  # fmt: skip
    assert code == 3 and "missing" in out
    code, out = run_cli(
        "train", "autoencoder", "--config", "tiny", "--data", tiny_cohort, "--out", tmp_path / "r",
        "--resume",
    )  # fmt: skip
    assert code == 3 and "trainer_state.pt" in out
