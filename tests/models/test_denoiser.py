"""Stage 2 pieces: slice stacking, denoiser shapes, schedulers, loss, seeded sampling."""

from __future__ import annotations

import pytest
import torch

from fedcmr4d.config import DiffusionConfig
from fedcmr4d.models.denoiser import build_unet as build_unet_from_args
from fedcmr4d.models.denoiser import stack_slices, unstack_slices
from fedcmr4d.models.losses import diffusion_loss
from fedcmr4d.pipelines.generation import denoise
from fedcmr4d.schedulers import build_sample_scheduler, build_train_scheduler, min_snr_weights


def build_unet(cfg: DiffusionConfig, in_channels: int):  # noqa: ANN201
    """The denoiser from a diffusion config's fields, as train.models builds it."""
    return build_unet_from_args(
        in_channels=in_channels,
        channels=cfg.channels,
        attention_levels=cfg.attention_levels,
        num_res_blocks=cfg.num_res_blocks,
        norm_num_groups=cfg.norm_num_groups,
        num_head_channels=cfg.num_head_channels,
    )


TINY = DiffusionConfig(
    channels=[8, 16],
    attention_levels=[False, True],
    num_head_channels=8,
    norm_num_groups=8,
    timesteps=20,
    sample_steps=2,
)


def test_stack_unstack_round_trip() -> None:
    latents = torch.randn(2, 6, 8, 4, 4, 2)
    stacked = stack_slices(latents)
    assert stacked.shape == (2, 48, 4, 4, 2)
    assert torch.equal(stacked[:, 8:16], latents[:, 1])
    assert torch.equal(unstack_slices(stacked, 8), latents)
    with pytest.raises(ValueError, match="latents"):
        stack_slices(torch.randn(2, 48, 4, 4, 2))
    with pytest.raises(ValueError, match="latent_stack"):
        unstack_slices(torch.randn(2, 47, 4, 4, 2), 8)


@pytest.mark.parametrize(
    ("in_channels", "shape"),
    [(48, (2, 48, 4, 4, 2)), (8, (3, 8, 4, 4, 4)), (16, (1, 16, 8, 8, 2))],
)
def test_unet_shapes(in_channels: int, shape: tuple) -> None:
    unet = build_unet(TINY, in_channels)
    out = unet(x=torch.randn(shape), timesteps=torch.zeros(shape[0], dtype=torch.long))
    assert out.shape == shape
    assert list(unet.named_buffers()) == []


def test_unet_validation() -> None:
    with pytest.raises(ValueError, match="in_channels"):
        build_unet(TINY, 0)
    with pytest.raises(ValueError, match="norm_num_groups"):
        build_unet(TINY.model_copy(update={"channels": [12, 16]}), 8)


@pytest.mark.parametrize("prediction", ["v_prediction", "epsilon"])
def test_loss_is_finite_and_differentiable(prediction: str) -> None:
    cfg = TINY.model_copy(update={"prediction": prediction})
    unet = build_unet(cfg, 8)
    loss = diffusion_loss(
        unet, build_train_scheduler(cfg), torch.randn(2, 8, 4, 4, 2), huber_delta=1.0
    )
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in unet.parameters() if p.requires_grad)


@pytest.mark.parametrize("prediction", ["v_prediction", "epsilon", "sample"])
def test_min_snr_weights_clip_the_signal_to_noise_ratio(prediction: str) -> None:
    scheduler = build_train_scheduler(TINY.model_copy(update={"prediction": prediction}))
    t = torch.arange(scheduler.num_train_timesteps)
    abar = scheduler.alphas_cumprod[t].float()
    snr = abar / (1 - abar)
    w = min_snr_weights(scheduler, t, 5.0)
    as_if_epsilon = {"v_prediction": w * (snr + 1), "epsilon": w * snr, "sample": w}[prediction]
    # in the clean sample's terms the weight is min(SNR, 5): SNR itself below 5, 5 above
    assert torch.allclose(as_if_epsilon, torch.minimum(snr, torch.tensor(5.0)), rtol=1e-4)
    assert bool((snr > 5).any()) and bool((snr < 5).any())  # both regimes are tested


def test_min_snr_loss_is_the_weighted_mean_of_per_sample_losses() -> None:
    cfg = TINY.model_copy(update={"prediction": "v_prediction"})
    unet, scheduler = build_unet(cfg, 8), build_train_scheduler(cfg)
    clean = torch.randn(3, 8, 4, 4, 2)
    gen = torch.Generator().manual_seed(0)
    weighted = diffusion_loss(
        unet, scheduler, clean, huber_delta=1.0, generator=gen, min_snr_gamma=5.0
    )
    gen = torch.Generator().manual_seed(0)  # the same noise and timesteps, drawn by hand
    noise = torch.randn(clean.shape, generator=gen)
    t = torch.randint(0, scheduler.num_train_timesteps, (3,), generator=gen)
    with torch.no_grad():
        pred = unet(x=scheduler.add_noise(clean, noise, t), timesteps=t)
    target = scheduler.get_velocity(clean, noise, t)
    per_sample = torch.nn.functional.huber_loss(pred, target, reduction="none").flatten(1).mean(1)
    expected = (per_sample * min_snr_weights(scheduler, t, 5.0)).mean()
    assert torch.allclose(weighted.detach(), expected, rtol=1e-5)
    assert not torch.allclose(expected, per_sample.mean())  # the weights did something


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sampling_is_seeded(sampler: str) -> None:
    cfg = TINY.model_copy(update={"sampler": sampler})
    unet = build_unet(cfg, 8).eval()
    steps: list[int] = []

    def run(seed: int) -> torch.Tensor:
        scheduler = build_sample_scheduler(cfg, clip=3.0)
        gen = torch.Generator().manual_seed(seed)
        return denoise(unet, scheduler, (2, 8, 4, 4, 2), generator=gen, on_step=steps.append)

    a, b, c = run(1), run(1), run(2)
    assert a.shape == (2, 8, 4, 4, 2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(steps) == 3 * cfg.sample_steps
