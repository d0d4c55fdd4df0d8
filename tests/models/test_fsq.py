"""ScalarQuantizer (FSQ): the grid, the straight-through gradient, indices, scale, validation,
and the FSQ autoencoder through the config, the checkpoint scale and a DP-SGD step."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from fedcmr4d.config import load_config
from fedcmr4d.data.phantom import write_phantom_cohort
from fedcmr4d.errors import ConfigError
from fedcmr4d.models.fsq import ScalarQuantizer, fsq_latent_scale
from fedcmr4d.privacy.site import SitePrivacy
from fedcmr4d.train.checkpoint import stage1_latent_scale
from fedcmr4d.train.models import build_autoencoder
from fedcmr4d.train.trainer import StageTrainer

FSQ = ["autoencoder.quantizer=fsq", "diffusion.decode_latents=nearest_code"]


def test_values_lie_on_the_grid_and_indices_name_them_one_to_one() -> None:
    q = ScalarQuantizer([3, 5, 7])
    out = q(torch.randn(4, 3, 6, 5) * 3)
    values = out.quantized.detach()
    for d, levels in enumerate((3, 5, 7)):
        half = (levels - 1) / 2
        units = values[:, d] * half
        assert torch.allclose(units, units.round(), atol=1e-5)
        assert units.abs().max() <= half
    assert out.indices.shape == (4, 6, 5)
    assert 0 <= int(out.indices.min()) and int(out.indices.max()) < 3 * 5 * 7
    flat_values = values.movedim(1, -1).reshape(-1, 3)
    flat_indices = out.indices.reshape(-1)
    for index in flat_indices.unique():  # the same index always means the same values
        rows = flat_values[flat_indices == index]
        assert torch.allclose(rows, rows[0].expand_as(rows))
    assert len({tuple(r.tolist()) for r in flat_values}) == len(flat_indices.unique())


def test_every_grid_point_has_its_own_index() -> None:
    q = ScalarQuantizer([3, 5])
    grid = torch.tensor(list(itertools.product([-1, 0, 1], [-1, -0.5, 0, 0.5, 1.0])))
    assert sorted(q._indices(grid).tolist()) == list(range(15))


def test_straight_through_gradient_reaches_the_input() -> None:
    q = ScalarQuantizer([5] * 4)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    q(z).quantized.sum().backward()
    assert z.grad is not None
    expected = 1 - torch.tanh(z.detach()) ** 2  # d/dz of tanh(z); the rounding passes through
    assert torch.allclose(z.grad, expected, atol=1e-6)


def test_snap_is_forward_and_round_latents_finds_the_nearest_value() -> None:
    q = ScalarQuantizer([5, 5])
    z = torch.randn(3, 2, 4)
    assert torch.equal(q.snap(z), q(z).quantized.detach())
    sampled = torch.tensor([[[0.2, 0.3, -0.8, 1.7, -0.26]] * 2])  # (1, 2, 5)
    expected = torch.tensor([[[0.0, 0.5, -1.0, 1.0, -0.5]] * 2])
    assert torch.equal(q.round_latents(sampled), expected)


def test_no_parameters_no_state_and_zero_auxiliary_losses() -> None:
    q = ScalarQuantizer([5] * 8)
    assert list(q.parameters()) == [] and q.state_dict() == {}
    out = q(torch.randn(2, 8, 4, 4, 2))
    assert float(out.codebook_loss) == float(out.commitment_loss) == float(out.entropy_loss) == 0
    counts = torch.bincount(out.indices.reshape(-1)).float()
    probs = counts[counts > 0] / counts.sum()
    assert float(out.perplexity) == pytest.approx(float(torch.exp(-(probs * probs.log()).sum())))


def test_latent_scale_is_one_over_the_std_of_uniformly_used_levels() -> None:
    levels = [3, 5, 7]
    values = torch.cat([torch.linspace(-1, 1, v) for v in levels])
    weights = torch.cat([torch.full((v,), 1.0 / (v * len(levels))) for v in levels])
    std = math.sqrt(float((weights * values**2).sum()))
    assert fsq_latent_scale(levels) == pytest.approx(1 / std)
    assert ScalarQuantizer(levels).latent_scale() == pytest.approx(1 / std)


@pytest.mark.parametrize("levels", [[4, 5], [1, 3], [], [5, 2]])
def test_levels_must_be_odd_and_at_least_three(levels: list[int]) -> None:
    with pytest.raises(ValueError, match="odd integers >= 3"):
        ScalarQuantizer(levels)


def test_wrong_channel_count_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\(N, 3, \*spatial\)"):
        ScalarQuantizer([3, 3, 3])(torch.randn(1, 4, 2, 2))


@pytest.mark.parametrize(
    ("base", "overrides", "message"),
    [
        ("demo", ["diffusion.decode_latents=unit_sphere"], "'unit_sphere' does not apply"),
        ("demo", ["autoencoder.fsq_levels=[5, 5]"], "one entry per latent dimension"),
        ("demo", ["autoencoder.fsq_levels=[4, 5, 5, 5, 5, 5, 5, 5]"], "odd integers"),
        ("demo", ["autoencoder.entropy_weight=0.1"], "entropy_weight must be 0"),
        ("tiny", ["diffusion.decode_latents=clamp"], "'clamp' does not apply"),
    ],
)
def test_config_refuses_fsq_settings_that_cannot_work(
    base: str, overrides: list[str], message: str
) -> None:
    assert load_config("demo").autoencoder.quantizer == "fsq"  # the demo's own recipe
    with pytest.raises(ConfigError, match=message):
        load_config(base, overrides)


def test_fsq_autoencoder_round_trip_decode_modes_and_checkpoint_scale() -> None:
    cfg = load_config("demo", FSQ)
    model = build_autoencoder(cfg)
    assert not any("quantizer" in k for k in model.state_dict())
    x = torch.rand(2, 1, 32, 32, 16)
    latents = model.encode_stage_2_inputs(x)
    assert latents.shape == (2, 8, 8, 8, 8) and latents.abs().max() <= 1
    near = model.decode_stage_2_outputs(latents * 1.01, "nearest_code")
    assert torch.allclose(near, model.decode(latents), atol=1e-6)
    clamp = model.decode_stage_2_outputs(latents * 3, "clamp")
    assert torch.allclose(clamp, model.decode((latents * 3).clamp(-1, 1)), atol=1e-6)
    with pytest.raises(ValueError, match="does not apply to the fsq quantizer"):
        model.decode_stage_2_outputs(latents, "unit_sphere")
    weights = {f"autoencoder.{k}": v for k, v in model.state_dict().items()}
    assert stage1_latent_scale(cfg, weights) == pytest.approx(model.quantizer.latent_scale())
    cosine = load_config("tiny")
    assert cosine.autoencoder.quantizer == "cosine"
    cosine_model = build_autoencoder(cosine)
    cosine_weights = {f"autoencoder.{k}": v for k, v in cosine_model.state_dict().items()}
    assert stage1_latent_scale(cosine, cosine_weights) == pytest.approx(
        cosine_model.quantizer.latent_scale()
    )


def test_fsq_autoencoder_trains_under_dp_sgd(tmp_path: Path) -> None:
    cohort = tmp_path / "cohort"
    write_phantom_cohort(cohort, 6, seed=0, image_size=32, slices=6, frames=16)
    cfg = load_config("tiny-dp", ["autoencoder.entropy_weight=0", *FSQ])
    privacy = SitePrivacy.open(cfg, 6, seed=0)
    trainer = StageTrainer("autoencoder", cfg, cohort, privacy=privacy)
    before = trainer.get_weights()
    metrics = trainer.train(1)
    after = trainer.get_weights()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("autoencoder"))
    assert metrics["epsilon"] == pytest.approx(privacy.ledger.epsilon())
