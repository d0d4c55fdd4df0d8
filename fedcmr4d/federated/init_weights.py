"""The seeded initial global model of a stage, built on the coordinator (no data needed).

Names follow :meth:`fedcmr4d.train.trainer.StageTrainer.get_weights`: ``<model>.<parameter>``
for the models ``autoencoder`` + ``discriminator`` (stage 1), ``unet`` (stage 2) or
``segmenter`` (the segmenter stage); a test checks
that the keys and shapes equal a real trainer's.
"""

from __future__ import annotations

import torch
from torch import nn

from fedcmr4d.config import Config
from fedcmr4d.train.models import (
    build_autoencoder,
    build_denoiser,
    build_discriminator,
    strip_prefixes,
)


def initial_weights(stage: str, cfg: Config) -> dict[str, torch.Tensor]:
    """Float32 CPU parameters of a freshly built stage model, seeded by ``cfg.seed``."""
    torch.manual_seed(cfg.seed)
    models: dict[str, nn.Module]
    if stage == "autoencoder":
        models = {"autoencoder": build_autoencoder(cfg), "discriminator": build_discriminator(cfg)}
    elif stage == "diffusion":
        models = {"unet": build_denoiser(cfg)}
    elif stage == "segmenter":
        from fedcmr4d.evaluate.segmenter import build_segmenter

        models = {"segmenter": build_segmenter(features=cfg.evaluate.segmenter_features)}
    else:
        raise ValueError(f"stage must be 'autoencoder', 'diffusion' or 'segmenter', got {stage!r}")
    return {
        f"{name}.{strip_prefixes(pname)}": param.detach().float().cpu().clone()
        for name, model in models.items()
        for pname, param in model.named_parameters()
    }
