"""One-pass and slice-wise sampling from stage-2 checkpoints (untrained weights: fast, exact)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fedcmr4d.config import Config, load_config
from fedcmr4d.data.phantom import write_phantom_cohort
from fedcmr4d.errors import InputError
from fedcmr4d.io import sha256_file
from fedcmr4d.pipelines.generation import (
    assemble_generator,
    load_generator,
    sample_cohort,
    sample_slicewise,
)
from fedcmr4d.train.checkpoint import load_checkpoint, save_checkpoint
from fedcmr4d.train.trainer import StageTrainer

Run = Callable[..., tuple[int, str]]


def _pair(root: Path, cfg: Config, cohort: Path) -> Path:
    ae = StageTrainer("autoencoder", cfg, cohort)
    save_checkpoint(root / "ae", stage="autoencoder", cfg=cfg, weights=ae.get_weights())
    ldm = StageTrainer("diffusion", cfg, cohort, autoencoder_weights=ae.get_weights())
    return save_checkpoint(
        root / "ldm",
        stage="diffusion",
        cfg=cfg,
        weights=ldm.get_weights(),
        meta={"privacy": {"epsilon": 3.0}},
        autoencoder=root / "ae",
        latent_scale=ldm.impl.latent_scale,
    )


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sample")
    write_phantom_cohort(root / "cohort", 2, seed=5, image_size=32, slices=6, frames=16)
    cfg = load_config("tiny", ["diffusion.sample_steps=2"])
    slicewise = load_config("tiny", ["diffusion.sample_steps=2", "diffusion.stack_slices=1"])
    return {
        "one_pass": _pair(root / "one", cfg, root / "cohort"),
        "slicewise": _pair(root / "sw", slicewise, root / "cohort"),
    }


def test_one_pass_is_seeded_and_writes_a_cohort(
    tmp_path: Path, checkpoints: dict[str, Path]
) -> None:
    a = sample_cohort(checkpoints["one_pass"], 3, tmp_path / "a", seed=1, batch_size=2)
    b = sample_cohort(checkpoints["one_pass"], 3, tmp_path / "b", seed=1, batch_size=2)
    c = sample_cohort(checkpoints["one_pass"], 3, tmp_path / "c", seed=2, batch_size=2)
    assert a.subject_ids == ["synth0000", "synth0001", "synth0002"]
    sa, sb, sc = a.load("synth0002"), b.load("synth0002"), c.load("synth0002")
    assert sa.cine.shape == (32, 32, 6, 16) and sa.zooms == (1.0, 1.0, 10.0)
    assert sa.frame_ms == pytest.approx(800.0 / 16)
    assert 0.0 <= sa.cine.min() and sa.cine.max() <= 1.0
    assert np.array_equal(sa.cine, sb.cine) and not np.array_equal(sa.cine, sc.cine)
    prov = a.index["provenance"]
    assert prov["sampling"] == "one-pass" and prov["seed"] == 1 and prov["config_name"] == "tiny"
    assert prov["checkpoint_sha256"] == sha256_file(checkpoints["one_pass"] / "model.safetensors")
    # a local DP run's ledger is the one site "local" (fedcmr4d.pipelines.generation.privacy_sites)
    assert prov["privacy"]["sites"]["local"]["all"]["epsilon"] == 3.0 and prov["code_version"]


def test_slicewise_baseline(tmp_path: Path, checkpoints: dict[str, Path]) -> None:
    cohort = sample_slicewise(checkpoints["slicewise"], 2, tmp_path / "s", seed=0, batch_size=5)
    assert len(cohort) == 2 and cohort.load("synth0001").cine.shape == (32, 32, 6, 16)
    assert cohort.index["provenance"]["sampling"] == "slicewise"
    with pytest.raises(InputError, match="stack_slices"):
        sample_slicewise(checkpoints["one_pass"], 1, tmp_path / "x")
    with pytest.raises(InputError, match="slice-wise"):
        sample_cohort(checkpoints["slicewise"], 1, tmp_path / "y")


def test_replaced_autoencoder_is_refused(tmp_path: Path, checkpoints: dict[str, Path]) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(checkpoints["one_pass"].parent, copy)
    (copy / "ae" / "model.safetensors").write_bytes(b"x")
    with pytest.raises(InputError, match=r"ae/model\.safetensors: SHA-256 differs"):
        sample_cohort(copy / "ldm", 1, tmp_path / "z")
    (copy / "ae" / "model.safetensors").unlink()
    with pytest.raises(InputError, match=r"ae/model\.safetensors: the stage-1 .* missing"):
        sample_cohort(copy / "ldm", 1, tmp_path / "z")
    with pytest.raises(InputError, match="diffusion"):
        sample_cohort(checkpoints["one_pass"].parent / "ae", 1, tmp_path / "w")


def test_stage2_weights_that_do_not_fit_the_config_name_the_file(
    tmp_path: Path, checkpoints: dict[str, Path]
) -> None:
    one_pass = load_checkpoint(checkpoints["one_pass"])
    slicewise = load_checkpoint(checkpoints["slicewise"])  # a 1-slice denoiser: other channels
    bad = save_checkpoint(
        tmp_path / "bad",
        stage="diffusion",
        cfg=one_pass.cfg,
        weights=slicewise.weights,
        autoencoder=checkpoints["one_pass"].parent / "ae",
        latent_scale=1.0,
    )
    with pytest.raises(InputError, match="weights do not match config") as err:
        load_generator(bad, "cpu")
    assert str(bad / "model.safetensors") in str(err.value)


def test_generator_takes_ema_weights_only_when_present(checkpoints: dict[str, Path]) -> None:
    import torch

    ldm = load_checkpoint(checkpoints["one_pass"])
    ae = load_checkpoint(checkpoints["one_pass"].parent / "ae")
    cpu = torch.device("cpu")
    raw = assemble_generator(ldm.cfg, ldm.weights, ae.weights, use_ema=True, device=cpu)
    assert not raw.used_ema  # asked for EMA, the weights have none: the raw UNet, said so
    assert raw.latent_scale == float(raw.autoencoder.quantizer.latent_scale())
    shifted = {
        **ldm.weights,
        **{f"ema.{k}": v + 1.0 for k, v in ldm.weights.items() if k.startswith("unet.")},
    }
    ema = assemble_generator(ldm.cfg, shifted, ae.weights, use_ema=True, device=cpu)
    plain = assemble_generator(ldm.cfg, shifted, ae.weights, use_ema=False, device=cpu)
    assert ema.used_ema and not plain.used_ema
    name, value = next((k, v) for k, v in ldm.weights.items() if k.startswith("unet."))
    loaded = dict(ema.unet.named_parameters()) | dict(ema.unet.named_buffers())
    key = name.removeprefix("unet.")
    assert torch.equal(loaded[key], value + 1.0)
    assert torch.equal(
        (dict(plain.unet.named_parameters()) | dict(plain.unet.named_buffers()))[key], value
    )


def test_pool_area_change_sees_a_beat_and_not_a_still_image() -> None:
    from fedcmr4d.pipelines.sample_figure import pool_area_change

    yy, xx = np.mgrid[:32, :32]
    radius = 6 - 3 * np.sin(np.linspace(0, np.pi, 16))  # contracts to half and back
    disk = ((xx - 16) ** 2 + (yy - 16) ** 2)[..., None] < radius[None, None, :] ** 2
    beating = np.repeat(disk[:, :, None, :], 2, axis=2).astype(np.float32)
    assert pool_area_change(beating) > 0.5
    assert pool_area_change(np.repeat(beating[..., :1], 16, axis=3)) == 0.0


def test_frame_figure(tmp_path: Path, checkpoints: dict[str, Path], run_cli: Run) -> None:
    sample_cohort(checkpoints["one_pass"], 2, tmp_path / "s", seed=0)
    out = tmp_path / "fig.png"
    real = checkpoints["one_pass"].parents[1] / "cohort"
    code, text = run_cli(
        "figure", "--synthetic", tmp_path / "s", "--real", real, "--out", out,
        "--subjects", "2", "--frames", "4",
    )  # fmt: skip
    assert code == 0, text
    assert out.stat().st_size > 1000
    changes = json.loads(text.strip().splitlines()[-1])["pool_area_change"]
    assert len(changes) == 3 and [k.split()[0] for k in changes] == [
        "real",
        "synthetic",
        "synthetic",
    ]
