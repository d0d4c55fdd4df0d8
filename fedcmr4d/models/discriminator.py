"""Patch discriminator with GroupNorm for the VQ-VAE's adversarial loss.

MONAI's ``PatchDiscriminator`` (Isola et al., pix2pix, CVPR 2017; 3D as in the VQ-GAN of the seed)
defaults to BatchNorm, whose running statistics are buffers written from data: forbidden under
DP. We build it with GroupNorm instead, so the module holds parameters only.
"""

from __future__ import annotations

from monai.networks.nets import PatchDiscriminator
from torch import Tensor, nn


def _groups(channels: int, wanted: int = 8) -> int:
    """Largest divisor of ``channels`` not above ``wanted`` (GroupNorm needs one)."""
    return max(g for g in range(1, min(wanted, channels) + 1) if channels % g == 0)


class GroupNormPatchDiscriminator(nn.Module):
    """Per-patch real/fake logits for (N, C, H, W, T) volumes.

    No defaults for what the config sets: :mod:`fedcmr4d.train.models` passes them from it.

    Args:
        in_channels: image channels.
        channels: width of the first layer (doubles per layer).
        num_layers: strided layers (each halves every axis).

    Shapes:
        (N, C, H, W, T) -> (N, 1, h', w', t') logits, one per receptive-field patch.
    """

    def __init__(self, in_channels: int = 1, *, channels: int, num_layers: int) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if channels < 4:
            raise ValueError(f"channels must be >= 4, got {channels}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.num_layers = num_layers
        self.net = PatchDiscriminator(
            spatial_dims=3,
            channels=channels,
            in_channels=in_channels,
            out_channels=1,
            num_layers_d=num_layers,
            norm=("GROUP", {"num_groups": _groups(channels)}),
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 5:
            raise ValueError(f"x must be (N, C, H, W, T), got {tuple(x.shape)}")
        try:
            return self.net(x)[-1]
        except RuntimeError as exc:
            if "Kernel size can't be greater" not in str(exc):
                raise
            raise ValueError(
                f"x of shape {tuple(x.shape)} is too small for num_layers={self.num_layers}"
            ) from None
