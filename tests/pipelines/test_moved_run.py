"""A run folder moved to another place samples the same subjects; a missing or altered stage 1 is
refused naming the file; no checkpoint meta names a subject of the cohort.

Local runs go through the real CLI (``train autoencoder``, ``train diffusion``, ``sample``); the
coordinator's layout (``<out-dir>/autoencoder``, ``<out-dir>/diffusion``) is written by the
ServerApp's own :func:`~fedcmr4d.federated.server_app.save_stage_checkpoint`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from flwr.app import ArrayRecord

from fedcmr4d.config import load_config
from fedcmr4d.data.cohort import open_cohort
from fedcmr4d.data.phantom import write_phantom_cohort
from fedcmr4d.errors import InputError
from fedcmr4d.evaluate.segmenter import train_segmenter
from fedcmr4d.federated.records import weights_to_record
from fedcmr4d.federated.server_app import save_stage_checkpoint
from fedcmr4d.federated.state import ServerState
from fedcmr4d.pipelines.generation import sample_cohort
from fedcmr4d.train.checkpoint import load_checkpoint
from fedcmr4d.train.local import train_local
from fedcmr4d.train.trainer import StageTrainer

Run = Callable[..., tuple[int, str]]
OVERRIDES = ["train.autoencoder.steps=2", "train.diffusion.steps=2", "diffusion.sample_steps=2"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("moved") / "cohort"
    write_phantom_cohort(root, 4, seed=11, image_size=32, slices=6, frames=16, id_prefix="pat")
    return root


def _cines(cohort_dir: Path) -> dict[str, bytes]:
    c = open_cohort(cohort_dir)
    return {s: c.load(s, with_labels=False).cine.tobytes() for s in c.subject_ids}


def _sample(run_cli: Run, checkpoint: Path, out: Path) -> dict[str, bytes]:
    code, text = run_cli(
        "sample", "--checkpoint", checkpoint, "--subjects", "2", "--out", out, "--seed", "7",
        "--quiet",
    )  # fmt: skip
    assert code == 0, text
    return _cines(out)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory, cohort: Path) -> Path:
    """``ae/``, ``ldm/`` (train_local, the code of ``fedcmr4d train``; 2 steps each), ``seg/``."""
    run = tmp_path_factory.mktemp("local") / "run"
    cfg = load_config("tiny", [*OVERRIDES, "evaluate.segmenter_steps=1"])
    train_local("autoencoder", cfg, cohort, run / "ae", progress=False)
    train_local("diffusion", cfg, cohort, run / "ldm", autoencoder_dir=run / "ae", progress=False)
    train_segmenter(open_cohort(cohort), run / "seg", cfg)
    return run


def test_moved_local_run_samples_the_same_subjects(
    tmp_path: Path, local_run: Path, run_cli: Run
) -> None:
    run = tmp_path / "here" / "run"
    shutil.copytree(local_run, run)
    meta = load_checkpoint(run / "ldm").meta
    assert meta["autoencoder"]["path"] == "../ae" and "autoencoder_checkpoint" not in meta
    before = _sample(run_cli, run / "ldm", tmp_path / "before")

    moved = tmp_path / "elsewhere" / "renamed-run"
    moved.parent.mkdir()
    shutil.move(str(run), str(moved))
    shutil.rmtree(tmp_path / "here")
    assert not run.exists()
    after = _sample(run_cli, moved / "ldm", tmp_path / "after")
    assert list(after) == list(before) == ["synth0000", "synth0001"]
    assert all(after[s] == before[s] for s in before)  # bytewise identical cines

    # stage 1 missing: the error names the weights file it looked for
    shutil.move(str(moved / "ae"), str(tmp_path / "ae-away"))
    code, text = run_cli(
        "sample", "--checkpoint", moved / "ldm", "--subjects", "1", "--out", tmp_path / "x"
    )
    assert code == 3 and "ae/model.safetensors" in text.replace("\n", "") and "missing" in text
    # stage 1 altered (retrained, replaced): SHA-256 mismatch, naming the file
    shutil.move(str(tmp_path / "ae-away"), str(moved / "ae"))
    weights = moved / "ae" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    with pytest.raises(InputError, match=r"ae/model\.safetensors: SHA-256 differs"):
        sample_cohort(moved / "ldm", 1, tmp_path / "y")


def test_no_checkpoint_names_a_subject(local_run: Path, cohort: Path) -> None:
    ids = open_cohort(cohort).subject_ids
    assert ids and all(i.startswith("pat") for i in ids)
    metas = sorted(local_run.glob("*/meta.json"))
    assert [p.parent.name for p in metas] == ["ae", "ldm", "seg"]
    for path in metas:
        assert not {"train_subjects", "holdout_subjects"} & json.loads(path.read_text()).keys()
    files = [p for p in local_run.rglob("*") if p.is_file()]
    assert {"meta.json", "config.yaml", "model.safetensors", "trainer_state.pt"} <= {
        p.name for p in files
    }
    for path in files:  # every file, weights and trainer state included, read as bytes
        data = path.read_bytes()
        assert not [i for i in ids if i.encode() in data], f"{path} names a subject"


def _stage_checkpoints(out: Path, cohort: Path) -> None:
    """Both stages in the coordinator's layout, written by the ServerApp's own writer."""
    cfg = load_config("tiny", OVERRIDES)
    ae = StageTrainer("autoencoder", cfg, cohort)
    ae_weights = ae.get_weights()
    ldm = StageTrainer("diffusion", cfg, cohort, autoencoder_weights=ae_weights)
    history = [
        {"stage": "autoencoder", "round": 1, "accepted": ["site-0-A"], "train": {}},
        {"stage": "diffusion", "round": 1, "accepted": ["site-0-A"], "train": {"epsilon": 2.0}},
    ]
    state = ServerState(stage="diffusion", round=1, history=history)
    evaluation: dict = {"mean": {}}
    for stage, weights in (("autoencoder", ae_weights), ("diffusion", ldm.get_weights())):
        arrays: ArrayRecord = weights_to_record(weights)
        save_stage_checkpoint(out / stage, stage, cfg, arrays, state, evaluation)
    assert load_checkpoint(out / "diffusion").meta["latent_scale"] == pytest.approx(
        ldm.checkpoint_meta()["latent_scale"]
    )


def test_moved_coordinator_out_dir_samples_the_same_subjects(
    tmp_path: Path, cohort: Path, run_cli: Run
) -> None:
    out = tmp_path / "server-out"
    _stage_checkpoints(out, cohort)
    meta = load_checkpoint(out / "diffusion").meta
    assert meta["autoencoder"]["path"] == "../autoencoder"
    ids = open_cohort(cohort).subject_ids
    for path in (out / "autoencoder" / "meta.json", out / "diffusion" / "meta.json"):
        assert not [i for i in ids if i in path.read_text()], f"{path} names a subject"
    before = _sample(run_cli, out / "diffusion", tmp_path / "before")
    moved = tmp_path / "steward" / "run"
    moved.parent.mkdir()
    shutil.move(str(out), str(moved))
    after = _sample(run_cli, moved / "diffusion", tmp_path / "after")
    assert after == before and len(after) == 2  # bytewise identical cines
