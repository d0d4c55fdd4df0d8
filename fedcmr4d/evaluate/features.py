"""The 2D feature network behind FID across depth, loaded from a local weights file.

No ImageNet Inception here: nothing may download, and cardiac cines are far from ImageNet. The
default feature network is the encoder of the project's own segmenter
(:mod:`fedcmr4d.evaluate.segmenter`), read from its ``segmenter.safetensors``. A frame's feature
vector joins texture and anatomy (256 values with the default widths, see
:meth:`FeatureNetwork._encode`): the shallow levels' filter responses react to blur and noise,
the deep levels' pooled activations to the shape and layout of the heart.

FID values are comparable only when computed with the same feature network (the same weights
file): :attr:`FeatureNetwork.sha256` identifies it and goes into ``metrics.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.networks.nets import BasicUNet

from fedcmr4d.errors import InputError
from fedcmr4d.evaluate.segmenter import (
    WEIGHTS_FILE,
    load_weights_file,
    pad_to_multiple,
    weights_features,
)
from fedcmr4d.io import sha256_file


def resolve_weights(path: str | Path) -> Path:
    """A weights file, or a segmenter checkpoint folder holding ``segmenter.safetensors``."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise InputError(
            f"{path}: feature-network weights file is missing (train one with "
            "`fedcmr4d train segmenter`, or set evaluate.feature_weights_path)"
        )
    return path


class FeatureNetwork:
    """Frame -> feature vector, from a segmenter's encoder.

    Args:
        weights: a segmenter ``.safetensors`` file or its checkpoint folder.
    """

    def __init__(self, weights: str | Path) -> None:
        self.path = resolve_weights(weights)
        self.sha256 = sha256_file(self.path)
        self.widths = weights_features(self.path)
        self.model: BasicUNet = load_weights_file(self.path)
        self.model.eval()

    @property
    def dim(self) -> int:
        """Feature dimension D: 2 * (w0 + w1) texture values + w3 + w4 anatomy values."""
        w = self.widths
        return 2 * (w[0] + w[1]) + w[3] + w[4]

    @torch.no_grad()
    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> (B, D) features.

        Texture: the spatial standard deviation of each raw (pre-GroupNorm) convolution response
        in the two full- and half-resolution levels, i.e. how strongly each learned edge and
        texture filter fires; blur lowers these and noise raises them. GroupNorm removes exactly
        this amplitude from everything deeper, which is why deep pooled features alone barely
        see noise. Anatomy: the global average of the two deepest levels' outputs.
        """
        m: Any = self.model
        texture = []
        h = x
        for index, level in enumerate((m.conv_0, m.down_1)):
            if index == 1:
                h = level.max_pooling(h)
            convs = level if index == 0 else level.convs
            for block in convs:
                raw = block.conv(h)
                texture.append(raw.std(dim=(-2, -1)))
                h = block.adn(raw)
        h = m.down_2(h)
        deep3 = m.down_3(h)
        deep4 = m.down_4(deep3)
        anatomy = [deep3.mean(dim=(-2, -1)), deep4.mean(dim=(-2, -1))]
        return torch.cat(texture + anatomy, dim=1)

    def frames(self, frames: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Features of a stack of frames: (M, X, Y) -> (M, D) float32.

        Frames are zero-padded to a multiple of 16 like in segmentation; the padding is the same
        for every cohort of the same size, so it does not bias a comparison.
        """
        device = next(self.model.parameters()).device
        out = []
        for start in range(0, frames.shape[0], batch_size):
            x = torch.from_numpy(np.ascontiguousarray(frames[start : start + batch_size]))
            x = pad_to_multiple(x.float().unsqueeze(1), 0.0).to(device)
            out.append(self._encode(x).cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def cine(self, cine: np.ndarray) -> np.ndarray:
        """Features of every frame of a cine: (X, Y, Z, T) -> (Z, T, D)."""
        x, y, z, t = cine.shape
        frames = np.moveaxis(cine, (2, 3), (0, 1)).reshape(z * t, x, y)
        return self.frames(frames).reshape(z, t, -1)
