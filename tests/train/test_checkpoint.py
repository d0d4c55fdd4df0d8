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
        stage="autoencoder",
        cfg=tiny_cfg,
        weights=weights,
        meta={"step": 7, "holdout_metrics": {"psnr": 2.5}},
    )
    ckpt = load_checkpoint(tmp_path / "ck")
    assert ckpt.stage == "autoencoder" and ckpt.meta["step"] == 7
    assert ckpt.meta["holdout_metrics"] == {"psnr": 2.5}
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
    (root / "meta.json").write_text('{"stage": "segmenter"}')
    with pytest.raises(InputError, match=r"meta\.json: no valid 'stage' \(expected autoencoder or"):
        load_checkpoint(root)
    with pytest.raises(ValueError, match="stage must be one of 'autoencoder', 'diffusion'"):
        save_checkpoint(root, stage="segmenter", cfg=tiny_cfg, weights=_weights())  # type: ignore[arg-type]


def test_stage2_meta_is_relative_and_checked(tmp_path: Path, tiny_cfg: Config) -> None:
    from fedcmr4d.io import sha256_file
    from fedcmr4d.train.checkpoint import load_autoencoder_of

    ae = save_checkpoint(
        tmp_path / "run" / "a", stage="autoencoder", cfg=tiny_cfg, weights=_weights()
    )
    ldm = save_checkpoint(
        tmp_path / "run" / "nested" / "ldm",
        stage="diffusion",
        cfg=tiny_cfg,
        weights=_weights(),
        autoencoder=ae,
        latent_scale=2.5,
    )
    ref = load_checkpoint(ldm).meta["autoencoder"]
    assert ref == {"path": "../../a", "sha256": sha256_file(ae / "model.safetensors")}
    assert str(tmp_path) not in (ldm / "meta.json").read_text()  # no absolute path
    assert load_autoencoder_of(load_checkpoint(ldm)).root == ldm / "../../a"
    with pytest.raises(ValueError, match="autoencoder= and latent_scale="):
        save_checkpoint(tmp_path / "x", stage="diffusion", cfg=tiny_cfg, weights=_weights())
    with pytest.raises(ValueError, match="diffusion checkpoints only"):
        save_checkpoint(
            tmp_path / "x", stage="autoencoder", cfg=tiny_cfg, weights=_weights(), autoencoder=ae
        )
    with pytest.raises(InputError, match=r"nope/model\.safetensors: missing"):
        save_checkpoint(
            tmp_path / "x", stage="diffusion", cfg=tiny_cfg, weights=_weights(),
            autoencoder=tmp_path / "nope", latent_scale=1.0,
        )  # fmt: skip


def test_subject_ids_are_refused_in_meta(tmp_path: Path, tiny_cfg: Config) -> None:
    with pytest.raises(ValueError, match="subject ids.*train_subjects"):
        save_checkpoint(
            tmp_path / "ck",
            stage="autoencoder",
            cfg=tiny_cfg,
            weights=_weights(),
            meta={"train_subjects": ["p1"]},
        )
    assert not (tmp_path / "ck").exists()


def test_codebook_latent_scale_matches_the_quantizer(tiny_cfg: Config) -> None:
    from fedcmr4d.train.checkpoint import codebook_latent_scale
    from fedcmr4d.train.models import build_autoencoder

    model = build_autoencoder(tiny_cfg)
    weights = {f"autoencoder.{k}": v for k, v in model.state_dict().items()}
    assert codebook_latent_scale(weights) == pytest.approx(model.quantizer.latent_scale())
    with pytest.raises(ValueError, match="codebook"):
        codebook_latent_scale({"unet.a": torch.zeros(1)})
