"""The segmenter as a federated stage: the trainer's stage, its refusals, and a real simulation
whose checkpoint labels a cohort while one site's policy refuses the rounds asked."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fedcmr4d.config import load_config
from fedcmr4d.data.phantom import write_phantom_cohort
from fedcmr4d.errors import ConfigError, InputError
from fedcmr4d.federated.coordinator import Coordinator
from fedcmr4d.federated.init_weights import initial_weights
from fedcmr4d.federated.settings import RunSettings
from fedcmr4d.federated.simulation import run_simulated_federation, simulation_backend
from fedcmr4d.federated.stage_checkpoint import segmenter_was_dp
from fedcmr4d.train.trainer import StageTrainer

SMALL = ["evaluate.segmenter_features=[8,8,8,8,8,8]", "train.segmenter.steps=2"]


def _cohort(root: Path, subjects: int = 3) -> Path:
    write_phantom_cohort(root, subjects, seed=5, image_size=32, slices=6, frames=16)
    return root


def test_trainer_trains_labelled_subjects_with_the_coordinators_weight_names(
    tmp_path: Path,
) -> None:
    cohort = _cohort(tmp_path / "c")
    unlabelled = sorted(p for p in cohort.iterdir() if p.is_dir())[0]
    (unlabelled / "labels.nii.gz").unlink()
    cfg = load_config("tiny", SMALL)
    trainer = StageTrainer("segmenter", cfg, cohort)
    assert unlabelled.name not in trainer.subject_ids and len(trainer.subject_ids) == 2
    assert tuple(trainer.dataset[0].shape) == (4, 2, 32, 32)  # k frames x (image, labels)
    initial = initial_weights("segmenter", cfg)
    assert {k: v.shape for k, v in initial.items()} == {
        k: v.shape for k, v in trainer.get_weights().items()
    }
    trainer.set_weights(initial)
    metrics = trainer.train(2)
    assert metrics["num-examples"] == 2 and np.isfinite(metrics["loss"])
    after = trainer.get_weights()
    assert any(not np.allclose(after[k], initial[k]) for k in initial)
    held_out = trainer.evaluate([unlabelled.name])  # no labels: nothing to score
    assert held_out == {"num-examples": 0.0}
    scored = trainer.evaluate(trainer.subject_ids)
    assert 0.0 <= scored["val_dice"] <= 1.0 and scored["num-examples"] == 2


def test_a_cohort_without_labels_is_refused_naming_it(tmp_path: Path) -> None:
    cohort = _cohort(tmp_path / "bare", subjects=2)
    for labels in cohort.glob("*/labels.nii.gz"):
        labels.unlink()
    with pytest.raises(InputError, match=r"bare: none of the 2 subjects has labelled frames"):
        StageTrainer("segmenter", load_config("tiny", SMALL), cohort)


def test_the_coordinator_accepts_a_dp_run_with_the_segmenter_stage(tmp_path: Path) -> None:
    settings = RunSettings(config="tiny-dp", stages="segmenter,audit", out_dir=str(tmp_path))
    assert Coordinator(None, settings).stages == ["segmenter", "audit"]  # type: ignore[arg-type]


def test_the_segmenter_counts_as_dp_only_when_every_averaged_site_reported_epsilon() -> None:
    entry = {"epsilon": 3.0, "delta": 1e-3, "accountant": "rdp"}
    meta = {
        "sites": ["site-A (node 11)", "site-B (node 12)"],
        "privacy": {"sites": {"site-A": {"segmenter": entry}, "site-B": {"segmenter": entry}}},
    }
    assert segmenter_was_dp(meta)
    # site-B's node config did not ask for DP: it reported no ε for this stage
    meta["privacy"]["sites"]["site-B"] = {"diffusion": entry}
    assert not segmenter_was_dp(meta)
    assert not segmenter_was_dp({"sites": [], "privacy": {}})


def test_labels_come_from_the_federated_segmenter_unless_overridden(tmp_path: Path) -> None:
    def labeller(**kw: str) -> str:
        return Coordinator(None, RunSettings(out_dir=str(tmp_path), **kw)).label_segmenter()  # type: ignore[arg-type]

    stages = "autoencoder,diffusion,segmenter,audit"
    assert labeller(stages=stages) == str(tmp_path / "segmenter")
    assert labeller(stages=stages, label_segmenter="/seg") == "/seg"
    assert labeller(stages="autoencoder,diffusion,audit") == ""
    with pytest.raises(ConfigError, match="must be in the order"):
        RunSettings(stages="segmenter,diffusion").stage_list()


@pytest.mark.slow
def test_three_sites_train_the_segmenter_one_refuses_and_its_checkpoint_labels_a_cohort(
    tmp_path: Path, site_maker: Callable[..., Path]
) -> None:
    from fedcmr4d.evaluate.segmenter import load_segmenter
    from fedcmr4d.pipelines.labelling import label_cohort

    cohorts = site_maker(tmp_path, "ABC", subjects=3)
    settings = RunSettings(
        config="tiny",
        overrides=";".join(SMALL),
        stages="segmenter",
        rounds_segmenter=2,
        out_dir=str(tmp_path / "out"),
        cohort_root=str(cohorts),
        state_root=str(tmp_path / "site-state"),
    )
    lines: list[str] = []
    state = run_simulated_federation(
        settings,
        progress=lines.append,
        backend_config=simulation_backend(num_cpus=1, total_cpus=2),
        node_configs={2: {"max-rounds": 1}},
    )

    assert state.completed_stages == ["segmenter"]
    assert [(r["stage"], r["round"]) for r in state.history] == [
        ("segmenter", 1),
        ("segmenter", 2),
    ]
    for row in state.history:
        assert sorted(name.split(" ")[0] for name in row["accepted"]) == ["site-0-A", "site-1-B"]
        assert [r["reason"] for r in row["rejected"]] == [
            "site policy: max-rounds: asked 2, limit 1"
        ]
        assert row["refused"] == 1
        assert row["train"]["num-examples"] == 4  # 2 sites x 2 labelled training subjects
    out = Path(settings.out_dir)
    evaluation = json.loads((out / "segmenter-evaluation.json").read_text())
    assert 0.0 <= evaluation["mean"]["val_dice"] <= 1.0

    model, meta = load_segmenter(out / "segmenter")
    assert meta["kind"] == "fedcmr4d-segmenter" and meta["federated"] is True
    assert meta["frame_shape"] == [32, 32] and meta["privacy"]["dp"] is False
    assert meta["round"] == 2 and meta["steps"] == 4 and meta["n_train_subjects"] == 4
    assert meta["data"] is None and len(meta["sites"]) == 2

    synthetic = _cohort(tmp_path / "to-label", subjects=2)
    result = label_cohort(synthetic, out / "segmenter")
    assert len(result.subjects) == 2
    index = json.loads((synthetic / "cohort.json").read_text())
    assert index["provenance"]["labels"]["segmenter_dp"] is False
    assert index["provenance"]["labels"]["segmenter_train_subjects"] == 4


@pytest.mark.slow
def test_a_dp_federation_trains_a_dp_segmenter_that_labels_a_dp_cohort(
    tmp_path: Path, two_sites: Path
) -> None:
    from fedcmr4d.evaluate.segmenter import load_segmenter
    from fedcmr4d.pipelines.labelling import label_cohort

    settings = RunSettings(
        config="tiny-dp",
        overrides=";".join([*SMALL, "train.segmenter.batch_size=1"]),
        stages="segmenter",
        rounds_segmenter=1,
        out_dir=str(tmp_path / "out"),
        cohort_root=str(two_sites),
        state_root=str(tmp_path / "site-state"),
    )
    state = run_simulated_federation(
        settings,
        progress=lambda _: None,
        backend_config=simulation_backend(num_cpus=1, total_cpus=2),
    )
    assert state.completed_stages == ["segmenter"]
    (row,) = state.history
    assert set(row["train"]) <= {"epsilon", "delta", "num-examples"}  # no loss leaves a site
    _, meta = load_segmenter(Path(settings.out_dir) / "segmenter")
    assert meta["privacy"]["dp"] is True
    sites = meta["privacy"]["sites"]
    assert sorted(sites) == ["site-0-A", "site-1-B"]
    assert all(0 < entry["segmenter"]["epsilon"] < 50 for entry in sites.values())

    dp = {"privacy": {"sites": {"site-0-A": {"diffusion": {"epsilon": 1.0, "delta": 1e-3}}}}}
    synthetic = _cohort(tmp_path / "to-label", subjects=1)
    index_path = synthetic / "cohort.json"
    index = json.loads(index_path.read_text())
    index["provenance"] = {**index.get("provenance", {}), **dp}
    index_path.write_text(json.dumps(index))
    label_cohort(synthetic, Path(settings.out_dir) / "segmenter")
    provenance = json.loads(index_path.read_text())["provenance"]
    assert provenance["labels"]["segmenter_dp"] is True
    labelled_sites = provenance["privacy"]["sites"]
    assert labelled_sites["site-0-A"]["diffusion"]["epsilon"] == 1.0  # kept
    site_a = sites["site-0-A"]["segmenter"]["epsilon"]
    assert labelled_sites["site-0-A"]["segmenter"]["epsilon"] == site_a
    assert "segmenter" in labelled_sites["site-1-B"]
