"""Checkpoint round trip and errors that name the missing or corrupt file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedcmr4d.config import Config
from fedcmr4d.errors import InputError
from fedcmr4d.train.checkpoint import load_checkpoint, save_checkpoint


def _weights() -> dict[str, torch.Tensor]:
    return {"unet.a": torch.randn(3, 4), "unet.b": torch.arange(5.0)}


def test_round_trip(tmp_path: Path, tiny_cfg: Config) -> None:
    weights = _weights()
    save_checkpoint(
        tmp_path / "ck",
        stage="diffusion",
        cfg=tiny_cfg,
        weights=weights,
        meta={"step": 7, "latent_scale": 2.5},
    )
    ckpt = load_checkpoint(tmp_path / "ck")
    assert ckpt.stage == "diffusion" and ckpt.meta["step"] == 7 and ckpt.meta["latent_scale"] == 2.5
    assert ckpt.cfg == tiny_cfg
    assert ckpt.meta["config_name"] == "tiny" and ckpt.meta["code_version"]
    assert list(ckpt.weights) == list(weights)
    assert all(torch.equal(ckpt.weights[k], weights[k]) for k in weights)
    assert not list((tmp_path / "ck").glob(".*tmp"))


def test_errors_name_the_file(tmp_path: Path, tiny_cfg: Config) -> None:
    root = tmp_path / "ck"
    with pytest.raises(InputError, match="does not exist"):
        load_checkpoint(root)
    save_checkpoint(root, stage="autoencoder", cfg=tiny_cfg, weights=_weights())
    (root / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"model\.safetensors.*SHA-256"):
        load_checkpoint(root)
    with pytest.raises(InputError, match=r"model\.safetensors.*not a readable"):
        load_checkpoint(root, verify=False)
    (root / "config.yaml").unlink()
    with pytest.raises(InputError, match=r"config\.yaml.*missing"):
        load_checkpoint(root)
    (root / "meta.json").write_text("{")
    with pytest.raises(InputError, match=r"meta\.json.*invalid JSON"):
        load_checkpoint(root)
    with pytest.raises(ValueError, match="stage"):
        save_checkpoint(root, stage="segmenter", cfg=tiny_cfg, weights=_weights())  # type: ignore[arg-type]
