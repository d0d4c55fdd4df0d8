"""Per-subject gradients, clipping of a subject as one sample, Poisson batches, step counting."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from fedcmr4d.privacy.accounting import SiteAccountant
from fedcmr4d.privacy.engine import PoissonSubjectSampler, SubjectDP, per_subject_gradients


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.SiLU(), nn.Conv3d(4, 1, 3, padding=1)
    )


def _coupled_loss(model: nn.Module, xs: Tensor) -> Tensor:
    """(k, 1, H, W, T) -> scalar; the second term couples the rows of the batch it is given."""
    y = model(xs)
    return (y - xs).abs().mean() + y.mean(dim=0).pow(2).mean()


def _ledger() -> SiteAccountant:
    return SiteAccountant(accountant="rdp", delta=1e-3, target_epsilon=100.0)


def test_per_subject_gradients_equal_a_loop_over_subjects() -> None:
    model = _net()
    x = torch.rand(3, 2, 1, 8, 8, 4)  # 3 subjects, k = 2 slices each
    losses, _ = per_subject_gradients(model, lambda xs: _coupled_loss(model, xs), x)
    assert losses.shape == (3,)
    for i in range(3):
        model.zero_grad()
        loss = _coupled_loss(model, x[i])
        loss.backward()
        assert torch.isclose(loss.detach(), losses[i], atol=1e-6)
        for p in model.parameters():
            assert torch.allclose(p.grad, p.grad_sample[i], atol=1e-5)


def test_aux_components_and_empty_batch() -> None:
    model = _net()
    x = torch.rand(2, 1, 1, 8, 8, 4)

    def loss_fn(xs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        l1 = (model(xs) - xs).abs().mean()
        return l1, {"l1": l1}

    losses, parts = per_subject_gradients(model, loss_fn, x)
    assert torch.equal(losses, parts["l1"])
    losses, parts = per_subject_gradients(model, loss_fn, x[:0])
    assert losses.numel() == 0
    assert all(p.grad_sample.shape == (0, *p.shape) for p in model.parameters())


def test_mismatched_subject_axes_are_refused() -> None:
    model = _net()
    with pytest.raises(ValueError, match="same subject axis"):
        per_subject_gradients(model, lambda a, b: a.sum(), torch.zeros(2, 1), torch.zeros(3, 1))


@pytest.mark.parametrize("k", [1, 4])
def test_subject_with_duplicated_slices_moves_model_at_most_lr_c_over_b(k: int) -> None:
    """k identical slices = ONE sample: the update is bounded by lr * C / B, whatever k."""
    torch.manual_seed(1)
    model = _net()
    lr, clip, batch = 0.5, 0.01, 2
    dp = SubjectDP(
        stage="autoencoder",
        ledger=_ledger(),
        n_subjects=4,
        batch_size=batch,
        noise_multiplier=0.0,
        max_grad_norm=clip,
    )
    optimizer = dp.wrap(torch.optim.SGD(model.parameters(), lr=lr))
    slice_ = torch.rand(1, 1, 8, 8, 4)
    subject = slice_.expand(k, -1, -1, -1, -1).unsqueeze(0)  # (1 subject, k, 1, 8, 8, 4)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])

    def loss_fn(xs: Tensor) -> Tensor:  # a sum over rows: k duplicates give k times the gradient
        return (model(xs) - 3.0).pow(2).mean(dim=(1, 2, 3, 4)).sum()

    dp.backward(model, loss_fn, subject)
    raw_norm = torch.cat([p.grad_sample.flatten() for p in model.parameters()]).norm()
    assert raw_norm > 10 * clip  # clipping is active
    optimizer.step()
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    moved = (after - before).norm().item()
    bound = lr * clip / batch
    assert moved <= bound * (1 + 1e-4)
    assert moved >= bound * 0.999  # and the bound is reached: clipping, not vanishing gradients


def test_each_dp_step_is_counted_once_per_optimizer() -> None:
    model_g, model_d = _net(), _net()
    ledger = _ledger()
    dp = SubjectDP(
        stage="autoencoder",
        ledger=ledger,
        n_subjects=5,
        batch_size=2,
        noise_multiplier=1.1,
        max_grad_norm=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    opt_g = dp.wrap(torch.optim.Adam(model_g.parameters(), lr=1e-3))
    opt_d = dp.wrap(torch.optim.Adam(model_d.parameters(), lr=1e-3))
    data = torch.rand(5, 1, 1, 8, 8, 4)
    for _ in range(3):
        for model, opt in ((model_d, opt_d), (model_g, opt_g)):
            idx = dp.draw()  # every DP optimizer step draws its own Poisson batch
            dp.backward(model, lambda xs, m=model: m(xs).abs().mean(), data[idx])
            opt.step()
            opt.zero_grad()
    assert ledger.steps == 6
    assert ledger.segments[0].sample_rate == pytest.approx(0.4)
    assert ledger.segments[0].noise_multiplier == 1.1


def test_noise_is_added_even_to_an_empty_batch() -> None:
    model = _net()
    dp = SubjectDP(
        stage="diffusion",
        ledger=_ledger(),
        n_subjects=3,
        batch_size=1,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
    )
    opt = dp.wrap(torch.optim.SGD(model.parameters(), lr=1.0))
    before = [p.detach().clone() for p in model.parameters()]
    dp.backward(model, lambda xs: model(xs).sum(), torch.zeros(0, 1, 1, 8, 8, 4))
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert dp.ledger.steps == 1


def test_poisson_sampler_rate_and_batch_size_check() -> None:
    sampler = PoissonSubjectSampler(200, 0.1, torch.Generator().manual_seed(0))
    sizes = [len(sampler.draw()) for _ in range(200)]
    assert 17 < sum(sizes) / len(sizes) < 23
    assert len(set(sizes)) > 3  # sizes vary: Poisson, not fixed batches
    from fedcmr4d.errors import ConfigError

    with pytest.raises(ConfigError, match="batch_size"):
        SubjectDP(
            stage="autoencoder",
            ledger=_ledger(),
            n_subjects=2,
            batch_size=3,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
        )
