"""A site's round as plain torch code: real trainer, FedProx pull; the tests' fault helpers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from faults import corrupt

from fedcmr4d.config import load_config
from fedcmr4d.data.phantom import write_phantom_cohort
from fedcmr4d.errors import ConfigError
from fedcmr4d.federated.init_weights import initial_weights
from fedcmr4d.federated.settings import SiteSettings
from fedcmr4d.federated.site import round_first_epoch, round_seed, train_round

ROUNDS = {"autoencoder": 1, "diffusion": 1}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> SiteSettings:
    root = tmp_path_factory.mktemp("site")
    write_phantom_cohort(root / "cohort", 3, seed=7, image_size=32, slices=6, frames=16)
    return SiteSettings(name="s", cohort=root / "cohort", state_dir=root / "state")


def _distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(((a[k] - b[k]) ** 2).sum()) for k in a))


def test_proximal_term_keeps_the_update_closer_to_the_global_model(site: SiteSettings) -> None:
    cfg = load_config("tiny", ["train.autoencoder.steps=4", "autoencoder.adversarial_weight=0"])
    start = initial_weights("autoencoder", cfg)
    distances = []
    for mu in (0.0, 100.0):
        torch.manual_seed(0)
        weights, metrics = train_round(
            "autoencoder", cfg, site, start, None, rounds=ROUNDS, server_round=1, proximal_mu=mu
        )
        assert metrics["num-examples"] == 2
        distances.append(_distance(weights, start))
    plain, proximal = distances
    assert 0 < proximal < 0.8 * plain


def test_fedprox_with_dp_is_refused(site: SiteSettings) -> None:
    cfg = load_config("tiny-dp")
    start = initial_weights("autoencoder", cfg)
    with pytest.raises(ConfigError, match="fedprox"):
        train_round(
            "autoencoder", cfg, site, start, None, rounds=ROUNDS, server_round=1, proximal_mu=1.0
        )


def test_corruptions_spoil_what_they_say() -> None:
    weights = {"a": np.zeros((2, 3), np.float32), "b": np.ones(4, np.float32)}
    assert np.isnan(corrupt(weights, "nan")["a"]).any()
    assert corrupt(weights, "shape")["a"].shape == (5,)
    assert float(corrupt(weights, "norm")["b"].min()) > 1e5
    assert np.array_equal(weights["a"], np.zeros((2, 3)))  # the original is untouched


def test_no_test_hooks_in_production_config_or_site_code() -> None:
    import fedcmr4d.federated.settings as settings_module
    import fedcmr4d.federated.site as site_module

    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    for text in (pyproject, Path(site_module.__file__).read_text(),
                 Path(settings_module.__file__).read_text()):  # fmt: skip
        assert "test-corrupt" not in text and "test-halt" not in text
    assert not hasattr(site_module, "corrupt")


def test_round_seed_is_stable_and_differs_by_site_stage_and_round() -> None:
    cfg = load_config("tiny")
    seed = round_seed(cfg, "site-A", "diffusion", 2)
    assert seed == round_seed(load_config("tiny"), "site-A", "diffusion", 2)  # no salted hash()
    others = {
        round_seed(cfg, "site-B", "diffusion", 2),
        round_seed(cfg, "site-A", "autoencoder", 2),
        round_seed(cfg, "site-A", "diffusion", 3),
        round_seed(load_config("tiny", ["seed=1"]), "site-A", "diffusion", 2),
    }
    assert seed not in others and len(others) == 4
    assert 0 <= seed < 2**64


def test_each_round_draws_new_epochs(site: SiteSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh trainer per round used to replay epoch 0 (same shuffle, same slices) each time."""
    from fedcmr4d.stages.autoencoder import AutoencoderStage

    seen: list[int] = []
    original = AutoencoderStage.set_epoch

    def record(self: AutoencoderStage, epoch: int) -> None:
        seen.append(epoch)
        original(self, epoch)

    monkeypatch.setattr(AutoencoderStage, "set_epoch", record)
    cfg = load_config("tiny", ["train.autoencoder.steps=3", "train.autoencoder.batch_size=1"])
    start = initial_weights("autoencoder", cfg)
    epochs = []
    for server_round in (1, 2):
        seen.clear()
        train_round(
            "autoencoder", cfg, site, start, None, rounds={"autoencoder": 2},
            server_round=server_round,
        )  # fmt: skip
        epochs.append(set(seen))
    # 2 training subjects, batch 1: 2 steps an epoch, so a 3-step round spans epochs 0-1, 2-3
    assert epochs == [{0, 1}, {2, 3}]


def test_round_first_epoch_gives_rounds_disjoint_epochs() -> None:
    for batches, per_epoch in ((3, 2), (10, 10), (1, 7), (25, 4)):
        spans = []
        for server_round in (1, 2, 3):
            first = round_first_epoch(server_round, batches, per_epoch)
            last = first + math.ceil(batches / per_epoch) - 1
            spans.append((first, last))
        assert spans[0][0] == 0
        assert all(a[1] < b[0] for a, b in zip(spans, spans[1:], strict=False))
