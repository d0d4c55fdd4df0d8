"""Stage-1 losses and the local-weights-only perceptual loss."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from fedcmr4d.errors import ConfigError
from fedcmr4d.models.losses import (
    PerceptualLoss,
    build_perceptual_loss,
    discriminator_loss,
    generator_adversarial_loss,
    reconstruction_loss,
)


def test_reconstruction_loss_is_l1_and_checks_shapes() -> None:
    a, b = torch.zeros(1, 1, 4, 4, 4), torch.full((1, 1, 4, 4, 4), 0.5)
    assert reconstruction_loss(a, b).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="reconstruction"):
        reconstruction_loss(a, torch.zeros(1, 1, 4, 4, 2))


@pytest.mark.parametrize("kind", ["least_squares", "hinge"])
def test_adversarial_losses_prefer_the_right_logits(kind: str) -> None:
    good, bad = torch.full((2, 1, 3, 3, 3), 1.0), torch.full((2, 1, 3, 3, 3), -1.0)
    assert generator_adversarial_loss(good, kind) < generator_adversarial_loss(bad, kind)  # type: ignore[arg-type]
    assert discriminator_loss(good, bad, kind) < discriminator_loss(bad, good, kind)  # type: ignore[arg-type]


def test_unknown_adversarial_kind() -> None:
    with pytest.raises(ValueError, match="kind"):
        generator_adversarial_loss(torch.zeros(1), "wasserstein")  # type: ignore[arg-type]


def test_perceptual_off_without_weights_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert build_perceptual_loss(0.1, None) is None
    assert sum("perceptual_weights_path" in r.message for r in caplog.records) == 1
    assert build_perceptual_loss(0.0, "/nonexistent") is None


def test_perceptual_missing_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "lpips.pt"
    with pytest.raises(ConfigError, match="lpips.pt"):
        build_perceptual_loss(0.1, str(missing))
    bad = tmp_path / "bad.pt"
    bad.write_text("not torchscript")
    with pytest.raises(ConfigError, match="bad.pt"):
        PerceptualLoss(bad)


def test_perceptual_from_local_torchscript(tmp_path: Path) -> None:
    net = torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()))
    path = tmp_path / "features.pt"
    torch.jit.save(net, str(path))
    loss = build_perceptual_loss(0.1, str(path))
    assert loss is not None
    x = torch.rand(2, 1, 8, 8, 4)
    assert loss(x, x).item() == pytest.approx(0.0)
    y = torch.rand(2, 1, 8, 8, 4, requires_grad=True)
    value = loss(y, x)
    value.backward()
    assert value.item() > 0 and y.grad is not None
    assert all(not p.requires_grad for p in loss.parameters())
