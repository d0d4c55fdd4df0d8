"""SpatioTemporalVQVAE: table of shapes, validation errors, no norm layers or buffers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedcmr4d.models.vqvae import SpatioTemporalVQVAE

# Every architecture argument, passed explicitly (the constructor has no defaults for them).
SMALL = {
    "channels": (4, 8),
    "num_res_layers": 1,
    "num_res_channels": (4, 8),
    "num_embeddings": 16,
    "embedding_dim": 8,
    "commitment_cost": 0.25,
    "temporal_downsample": 4,
    "entropy_usage": "sample",
}


@pytest.mark.parametrize(
    ("kwargs", "shape", "latent"),
    [
        (SMALL, (2, 1, 16, 16, 8), (2, 8, 4, 4, 2)),
        ({**SMALL, "temporal_downsample": 2}, (1, 1, 16, 16, 8), (1, 8, 4, 4, 4)),
        ({**SMALL, "embedding_dim": 4, "num_res_layers": 0}, (1, 1, 8, 12, 4), (1, 4, 2, 3, 1)),
        ({**SMALL, "in_channels": 2}, (1, 2, 8, 8, 8), (1, 8, 2, 2, 2)),
    ],
)
def test_shapes(kwargs: dict, shape: tuple, latent: tuple) -> None:
    model = SpatioTemporalVQVAE(**kwargs)
    x = torch.rand(shape)
    out = model(x)
    assert out.reconstruction.shape == shape
    z = model.encode_stage_2_inputs(x)
    assert z.shape == latent
    assert model.latent_shape(shape[2], shape[4])[0] == latent[1]
    assert model.decode_stage_2_outputs(torch.randn(latent), "unit_sphere").shape == shape


def test_stage_2_decoding_modes() -> None:
    model = SpatioTemporalVQVAE(**SMALL).eval()
    codes = model.encode_stage_2_inputs(torch.rand(2, 1, 8, 8, 8))
    both = [model.decode_stage_2_outputs(codes, m) for m in ("unit_sphere", "nearest_code")]
    assert torch.allclose(both[0], both[1], atol=1e-5)  # on the codebook the modes agree
    between = torch.randn_like(codes)
    sphere = model.decode_stage_2_outputs(between, "unit_sphere")
    assert torch.allclose(sphere, model.decode_stage_2_outputs(3.0 * between, "unit_sphere"))
    assert torch.allclose(sphere, model.decode(torch.nn.functional.normalize(between, dim=1)))
    assert not torch.allclose(sphere, model.decode_stage_2_outputs(between, "nearest_code"))
    with pytest.raises(ValueError, match="mode"):
        model.decode_stage_2_outputs(between, "round")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"in_channels": 0}, "in_channels"),
        ({"channels": (4, 8, 16)}, "channels"),
        ({"num_res_channels": (4,)}, "num_res_channels"),
        ({"num_res_layers": -1}, "num_res_layers"),
        ({"temporal_downsample": 3}, "temporal_downsample"),
    ],
)
def test_validation_names_argument(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        SpatioTemporalVQVAE(**{**SMALL, **kwargs})


def test_bad_input_shape() -> None:
    model = SpatioTemporalVQVAE(**SMALL)
    with pytest.raises(ValueError, match="divisible"):
        model(torch.rand(1, 1, 10, 16, 8))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W, T\)"):
        model(torch.rand(1, 16, 16, 8))


def test_no_normalisation_layers_and_no_buffers() -> None:
    model = SpatioTemporalVQVAE(**SMALL)
    assert list(model.named_buffers()) == []
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_stage_2_latents_are_unit_codes() -> None:
    model = SpatioTemporalVQVAE(**SMALL)
    z = model.encode_stage_2_inputs(torch.rand(1, 1, 16, 16, 8))
    codes = model.quantizer.normalized_codebook()
    flat = z.movedim(1, -1).reshape(-1, 8)
    best = (flat @ codes.t()).max(dim=1).values  # cosine with the nearest code
    assert torch.allclose(best, torch.ones_like(best), atol=1e-5)


def test_architecture_arguments_have_no_defaults() -> None:
    # The config is the one set of defaults: leaving an argument out is an error, not a guess.
    with pytest.raises(TypeError, match="num_embeddings"):
        SpatioTemporalVQVAE(**{k: v for k, v in SMALL.items() if k != "num_embeddings"})
