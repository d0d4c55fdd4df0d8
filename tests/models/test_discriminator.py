"""GroupNormPatchDiscriminator: shapes, validation, GroupNorm only."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedcmr4d.models.discriminator import GroupNormPatchDiscriminator


@pytest.mark.parametrize(
    ("kwargs", "shape", "expected"),
    [
        ({"channels": 8, "num_layers": 2}, (2, 1, 32, 32, 16), (2, 1, 6, 6, 2)),
        ({"channels": 4, "num_layers": 1}, (1, 1, 16, 16, 16), (1, 1, 6, 6, 6)),
        ({"channels": 6, "num_layers": 2, "in_channels": 2}, (1, 2, 32, 32, 32), (1, 1, 6, 6, 6)),
    ],
)
def test_shapes(kwargs: dict, shape: tuple, expected: tuple) -> None:
    assert GroupNormPatchDiscriminator(**kwargs)(torch.rand(shape)).shape == expected


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"in_channels": 0, "channels": 8, "num_layers": 2}, "in_channels"),
        ({"channels": 2, "num_layers": 2}, "channels"),
        ({"channels": 8, "num_layers": 0}, "num_layers"),
    ],
)
def test_validation_names_argument(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        GroupNormPatchDiscriminator(**kwargs)


def test_too_small_input_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="num_layers=3"):
        GroupNormPatchDiscriminator(channels=8, num_layers=3)(torch.rand(1, 1, 32, 32, 16))


def test_group_norm_only_and_no_buffers() -> None:
    disc = GroupNormPatchDiscriminator(channels=8, num_layers=2)
    norms = {type(m) for m in disc.modules() if "Norm" in type(m).__name__ and m is not disc}
    assert norms == {nn.GroupNorm}
    assert list(disc.named_buffers()) == []
