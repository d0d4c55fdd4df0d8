"""Guards: BatchNorm, running statistics and data-written buffers are refused, by layer name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedcmr4d.errors import ConfigError
from fedcmr4d.privacy.guards import check_dp_model, dp_model_problems


class _EmaCodebook(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("codes", torch.zeros(4, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)), "layer '1' (BatchNorm2d)"),
        (
            nn.Sequential(nn.Conv3d(1, 4, 3), nn.InstanceNorm3d(4, track_running_stats=True)),
            "layer '1' (InstanceNorm3d): track_running_stats",
        ),
        (nn.Sequential(nn.Linear(2, 2), _EmaCodebook()), "buffer '1.codes'"),
    ],
)
def test_bad_models_are_refused_naming_the_layer(module: nn.Module, expected: str) -> None:
    with pytest.raises(ConfigError, match="generator cannot be trained under DP") as exc:
        check_dp_model(module, name="generator")
    assert expected in str(exc.value)


def test_good_models_pass_and_constant_buffers_can_be_allowed() -> None:
    good = nn.Sequential(nn.Conv3d(1, 8, 3), nn.GroupNorm(4, 8), nn.InstanceNorm3d(8))
    assert check_dp_model(good, name="discriminator") is good
    table = nn.Sequential(nn.Linear(2, 2), _EmaCodebook())
    assert dp_model_problems(table, allowed_buffers=["1.codes"]) == []


def test_fix_replaces_batchnorm_with_groupnorm() -> None:
    fixed = check_dp_model(nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8)), name="g", fix=True)
    assert isinstance(fixed[1], nn.GroupNorm)
