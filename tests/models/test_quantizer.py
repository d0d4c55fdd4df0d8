"""CosineQuantizer: shapes, validation, codebook changed only by the optimizer."""

from __future__ import annotations

import math

import pytest
import torch

from fedcmr4d.models.quantizer import CosineQuantizer

# Every argument the config sets, passed explicitly (the constructor has no defaults for them).
ARGS = {"num_embeddings": 16, "embedding_dim": 8, "commitment_cost": 0.25, "usage": "sample"}


def quantizer(num_embeddings: int, embedding_dim: int, **kwargs: object) -> CosineQuantizer:
    return CosineQuantizer(
        **{**ARGS, "num_embeddings": num_embeddings, "embedding_dim": embedding_dim, **kwargs}
    )


@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        ({"num_embeddings": 16, "embedding_dim": 8}, (2, 8, 4, 4, 2)),
        ({"num_embeddings": 4, "embedding_dim": 3}, (1, 3, 5)),
        ({"num_embeddings": 64, "embedding_dim": 8, "commitment_cost": 0.0}, (3, 8, 2, 2, 2)),
    ],
)
def test_shapes(kwargs: dict, shape: tuple) -> None:
    q = CosineQuantizer(**{**ARGS, **kwargs})
    out = q(torch.randn(shape))
    assert out.quantized.shape == shape
    assert out.indices.shape == (shape[0], *shape[2:])
    assert out.indices.max() < kwargs["num_embeddings"]
    norms = out.quantized.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    for loss in (out.codebook_loss, out.commitment_loss, out.entropy_loss, out.perplexity):
        assert loss.ndim == 0 and torch.isfinite(loss)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_embeddings": 1}, "num_embeddings"),
        ({"embedding_dim": 0}, "embedding_dim"),
        ({"commitment_cost": -1.0}, "commitment_cost"),
        ({"entropy_temperature": 0.0}, "entropy_temperature"),
        ({"usage": "slice"}, "usage"),
    ],
)
def test_validation_names_argument(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        CosineQuantizer(**{**ARGS, **kwargs})


def test_wrong_channel_count_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"\(N, 8"):
        quantizer(16, 8)(torch.randn(2, 4, 3, 3))


def test_codebook_changes_only_through_the_optimizer() -> None:
    q = quantizer(32, 8).train()
    before = q.codebook.detach().clone()
    z = torch.randn(4, 8, 3, 3, 2, requires_grad=True)
    for _ in range(3):
        out = q(z)
    assert torch.equal(q.codebook, before), "a forward pass in train mode changed the codebook"
    assert list(dict(q.named_buffers())) == []
    loss = out.codebook_loss + out.commitment_loss + 0.1 * out.entropy_loss
    loss.backward()
    assert torch.equal(q.codebook, before), "backward alone changed the codebook"
    assert q.codebook.grad is not None and q.codebook.grad.abs().sum() > 0
    torch.optim.SGD(q.parameters(), lr=0.1).step()
    assert not torch.equal(q.codebook, before)


def test_straight_through_passes_gradient_to_encoder() -> None:
    q = quantizer(16, 8)
    z = torch.randn(2, 8, 3, 3, requires_grad=True)
    q(z).quantized.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_snap_returns_codes_and_perplexity_counts_usage() -> None:
    q = quantizer(8, 4)
    codes = q.normalized_codebook().detach()
    z = codes[torch.tensor([0, 1, 2, 3])].t().reshape(1, 4, 4) * 3.0  # scaled codes
    snapped = q.snap(z)
    assert torch.allclose(snapped, codes[:4].t().reshape(1, 4, 4), atol=1e-6)
    assert q.perplexity(torch.tensor([0, 1, 2, 3])).item() == pytest.approx(4.0)
    assert q.perplexity(torch.tensor([5, 5, 5])).item() == pytest.approx(1.0)


def test_latent_scale_is_a_function_of_the_codebook_only() -> None:
    q = quantizer(256, 8)
    scale = q.latent_scale()
    assert scale == pytest.approx(1.0 / float(q.normalized_codebook().detach().std()))
    assert 2.0 < scale < 3.5  # ~sqrt(8) for random unit codes


@pytest.mark.parametrize(("usage", "expected"), [("batch", -math.log(2)), ("sample", 0.0)])
def test_entropy_usage_is_averaged_over_the_batch_or_each_sample(
    usage: str, expected: float
) -> None:
    """Sample 0 sits on code 0 everywhere, sample 1 on code 1: confident (per-position entropy
    ~0); two codes in use over the batch (usage entropy log 2), one within each sample (0)."""
    q = quantizer(4, 2, usage=usage, entropy_temperature=1e-3)  # type: ignore[arg-type]
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]))
    z = torch.zeros(2, 2, 3, 3)
    z[0, 0], z[1, 1] = 1.0, 1.0
    out = q(z)
    assert out.indices[0].eq(0).all() and out.indices[1].eq(1).all()
    assert float(out.entropy_loss) == pytest.approx(expected, abs=1e-4)
    # "sample" decomposes: the batch's loss is the mean of each sample's own loss
    singles = [float(q(z[i : i + 1]).entropy_loss) for i in range(2)]
    if usage == "sample":
        assert float(out.entropy_loss) == pytest.approx(sum(singles) / 2, abs=1e-6)
    else:
        assert float(out.entropy_loss) < sum(singles) / 2 - 0.5
