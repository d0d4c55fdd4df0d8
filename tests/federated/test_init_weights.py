"""The coordinator's initial model has exactly the keys and shapes a site trainer exchanges."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedcmr4d.config import load_config
from fedcmr4d.data.phantom import write_phantom_cohort
from fedcmr4d.federated.init_weights import initial_weights
from fedcmr4d.train.trainer import StageTrainer


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("init") / "site"
    write_phantom_cohort(out, 2, seed=3, image_size=32, slices=6, frames=16)
    return out


def test_initial_weights_match_the_trainer(cohort: Path) -> None:
    cfg = load_config("tiny")
    ae = initial_weights("autoencoder", cfg)
    trainer = StageTrainer("autoencoder", cfg, cohort)
    theirs = trainer.get_weights()
    assert list(ae) == list(theirs)
    assert all(ae[k].shape == theirs[k].shape and ae[k].dtype == torch.float32 for k in ae)
    trainer.set_weights(ae)  # strict: raises on any mismatch
    unet = initial_weights("diffusion", cfg)
    stage2 = StageTrainer("diffusion", cfg, cohort, autoencoder_weights=ae)
    assert {k: v.shape for k, v in unet.items()} == {
        k: v.shape for k, v in stage2.get_weights().items()
    }


def test_initial_weights_are_seeded() -> None:
    cfg = load_config("tiny")
    first, second = initial_weights("diffusion", cfg), initial_weights("diffusion", cfg)
    assert all(torch.equal(first[k], second[k]) for k in first)
    with pytest.raises(ValueError, match="stage"):
        initial_weights("audit", cfg)
