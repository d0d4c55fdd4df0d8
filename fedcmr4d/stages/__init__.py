"""The training stages: the :class:`Stage` names here, one module per stage beside it.

- :mod:`~fedcmr4d.stages.autoencoder`: stage 1, the spatiotemporal VQ-VAE and its discriminator.
- :mod:`~fedcmr4d.stages.diffusion`: stage 2, the latent denoiser on the frozen stage 1.
- :mod:`~fedcmr4d.stages.segmenter`: the 2D LV/RV/myocardium segmenter that labels synthetic
  cohorts, trained on the sites' labelled frames (federated; under DP-SGD at DP sites).
- :mod:`~fedcmr4d.stages.base`: what the generic loop (:mod:`fedcmr4d.train.trainer`) asks of a
  stage, and the device/precision settings a stage runs under.

This module imports nothing heavy (``config.py`` uses :class:`Stage`).
"""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    """A training stage; its value is the name used in configs, messages and checkpoints."""

    AUTOENCODER = "autoencoder"
    DIFFUSION = "diffusion"
    SEGMENTER = "segmenter"

    @classmethod
    def parse(cls, value: str) -> Stage:
        """A stage's name (``"autoencoder"``, ...) or a :class:`Stage` -> :class:`Stage`.

        Raises:
            ValueError: naming the value and the stages there are.
        """
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(repr(s.value) for s in cls)
            raise ValueError(f"stage must be one of {names}, got {value!r}") from None


GENERATOR_STAGES: tuple[Stage, ...] = (Stage.AUTOENCODER, Stage.DIFFUSION)
"""The generator's two stages: the generator checkpoint format covers these (the segmenter
stage has its own checkpoint format)."""

__all__ = ["GENERATOR_STAGES", "Stage"]
