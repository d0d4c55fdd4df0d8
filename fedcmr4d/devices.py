"""Device resolution: one rule for training, sampling and the segmenter."""

from __future__ import annotations

import torch


def resolve_device(device: str) -> torch.device:
    """ "auto" -> CUDA when available, else CPU; "cuda" without a GPU is an error.

    Raises:
        ValueError: ``device`` names CUDA and no CUDA device is available.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but no CUDA device is available")
    return torch.device(device)
