"""The fused Adam(W) the training loops use makes the same update as torch's default loop."""

import torch
from torch import nn

from fedcmr4d.train.optimizers import fused_adam


def _trained(model: nn.Module, fused: bool | None, foreach: bool | None = None) -> torch.Tensor:
    opt = torch.optim.AdamW(
        model.parameters(), lr=1e-2, weight_decay=1e-4, fused=fused, foreach=foreach
    )
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_fused_on_cpu_float_parameters_and_same_update():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(2, 4, 3), nn.GroupNorm(2, 4), nn.Linear(4, 3))
    assert fused_adam(model.parameters()) is True
    start = {k: v.clone() for k, v in model.state_dict().items()}
    fused = _trained(model, fused_adam(model.parameters()))
    model.load_state_dict(start)
    default = _trained(model, None, foreach=False)
    assert not torch.equal(fused, torch.cat([v.flatten() for v in start.values()]))
    torch.testing.assert_close(fused, default, rtol=1e-5, atol=1e-6)


def test_not_fused_for_integer_or_no_parameters():
    assert fused_adam([]) is None
    assert fused_adam([nn.Parameter(torch.zeros(2, dtype=torch.float64))]) is True
    ints = torch.zeros(2, dtype=torch.int64)
    assert fused_adam([ints]) is None  # type: ignore[list-item]
