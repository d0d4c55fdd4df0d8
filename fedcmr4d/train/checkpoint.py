"""Checkpoints: ``model.safetensors`` + resolved ``config.yaml`` + ``meta.json``.

This module is the one writer (:func:`save_checkpoint`) and the one reader
(:func:`load_checkpoint`, :func:`load_autoencoder_of`) of the format, local and federated.

Every file is written to a temporary name and renamed; ``meta.json`` is written last and records
the SHA-256 of the weights file, so a folder whose meta is missing, or whose weights do not match
the meta, is never taken for a finished checkpoint.

A stage-2 (diffusion) checkpoint names its stage-1 checkpoint RELATIVELY to its own folder and
by the SHA-256 of its weights: ``"autoencoder": {"path": "../autoencoder", "sha256": ...}``, so
a run folder that holds both can be moved or copied to another machine and still samples the
same subjects. It also records ``latent_scale`` (taken from the stage-1 codebook when written).

Checkpoints carry no subject ids: the train/holdout split stays with the site that made it
(:func:`~fedcmr4d.train.local.split_subjects` recomputes it from the cohort, the holdout fraction
and the seed). :func:`save_checkpoint` refuses meta keys that would hold one.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from fedcmr4d import __version__
from fedcmr4d.config import Config, config_from_dict
from fedcmr4d.errors import ConfigError, InputError
from fedcmr4d.io import (
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    read_json_object,
    sha256_file,
)
from fedcmr4d.models.fsq import fsq_latent_scale
from fedcmr4d.models.quantizer import latent_scale_of_codebook
from fedcmr4d.stages import GENERATOR_STAGES, Stage
from fedcmr4d.train.models import stack_slices_of

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
META_FILE = "meta.json"
TRAINER_STATE_FILE = "trainer_state.pt"

#: Meta keys that would list the subjects a model was trained or held out on (never written).
SUBJECT_KEYS = frozenset({"train_subjects", "holdout_subjects", "subjects", "subject_ids"})

#: Where a stage-2 checkpoint's ``latent_scale`` comes from, per stage-1 quantizer (recorded
#: beside the value).
LATENT_SCALE_SOURCES = {
    "cosine": "codebook (1 / std of the l2-normalised codes' entries)",
    "fsq": "fsq_levels (1 / std of the grid values, every level used equally)",
}

#: Name of the stage-1 codebook in a stage-1 checkpoint's weights.
CODEBOOK_KEY = "autoencoder.quantizer.codebook"


@dataclass
class Checkpoint:
    """A loaded checkpoint: resolved config, CPU float weights, meta (stage, step, ...)."""

    root: Path
    cfg: Config
    weights: dict[str, Tensor]
    meta: dict[str, Any]

    @property
    def stage(self) -> str:
        return str(self.meta["stage"])


def code_version() -> str:
    """Package version, plus the git commit when running from a checkout."""
    root = Path(__file__).resolve().parents[2]
    if (root / ".git").exists():
        try:
            commit = subprocess.run(
                ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout.strip()
            return f"{__version__}+g{commit}"
        except (OSError, subprocess.SubprocessError):
            pass
    return __version__


def _atomic_save_weights(path: Path, weights: dict[str, Tensor]) -> None:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp), mode=0o644)


def save_checkpoint(
    out_dir: str | Path,
    *,
    stage: Stage,
    cfg: Config,
    weights: dict[str, Tensor],
    meta: dict[str, Any] | None = None,
    autoencoder: str | Path | None = None,
    latent_scale: float | None = None,
) -> Path:
    """Write a checkpoint into ``out_dir`` (created); returns the folder.

    Args:
        out_dir: checkpoint folder; files of an older checkpoint there are replaced.
        stage: "autoencoder" or "diffusion".
        cfg: the resolved config that made the weights.
        weights: name -> tensor (moved to CPU).
        meta: extra fields (step/round, privacy spent, held-out metrics); ``stage``,
            ``code_version``, ``weights_sha256`` and ``config_name`` are added here. Keys in
            :data:`SUBJECT_KEYS` are refused: checkpoints carry no subject ids.
        autoencoder: stage 2 only (required there): the stage-1 checkpoint folder the weights
            were trained on; recorded as a path relative to ``out_dir`` plus its SHA-256.
        latent_scale: stage 2 only (required there): the scale the trainer applied to the
            stage-1 latents (``trainer.latent_scale`` or :func:`stage1_latent_scale`).
    """
    stage = Stage.parse(stage)  # ValueError naming the stages there are
    if stage not in GENERATOR_STAGES:  # the segmenter has its own format (evaluate/segmenter.py)
        names = ", ".join(repr(s.value) for s in GENERATOR_STAGES)
        raise ValueError(f"stage must be one of {names}, got {stage.value!r}")
    extra = dict(meta or {})
    leaking = sorted(SUBJECT_KEYS & extra.keys())
    if leaking:
        raise ValueError(f"checkpoint meta must not carry subject ids, got keys {leaking}")
    root = Path(out_dir)
    if stage is Stage.DIFFUSION:
        if autoencoder is None or latent_scale is None:
            raise ValueError("a diffusion checkpoint needs autoencoder= and latent_scale=")
        extra |= stage2_meta(autoencoder, root, latent_scale=latent_scale, cfg=cfg)
    elif autoencoder is not None or latent_scale is not None:
        raise ValueError("autoencoder= and latent_scale= belong to diffusion checkpoints only")
    root.mkdir(parents=True, exist_ok=True)
    _atomic_save_weights(root / WEIGHTS_FILE, weights)
    atomic_write_text(root / CONFIG_FILE, cfg.to_yaml())
    full_meta = {
        **extra,
        "stage": stage.value,
        "config_name": cfg.name,
        "code_version": code_version(),
        "weights_sha256": sha256_file(root / WEIGHTS_FILE),
    }
    atomic_write_json(root / META_FILE, full_meta)
    return root


def stage2_meta(
    autoencoder_dir: str | Path, stage2_dir: str | Path, *, latent_scale: float, cfg: Config
) -> dict[str, Any]:
    """The stage-2 meta fields: relative stage-1 reference, latent scale, slices per stack.

    ``autoencoder.path`` is ``autoencoder_dir`` relative to ``stage2_dir`` (POSIX separators),
    so moving the folder that holds both keeps the reference valid.
    """
    ae_dir = Path(autoencoder_dir)
    weights = ae_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise InputError(f"{weights}: missing; {ae_dir} is not a finished stage-1 checkpoint")
    relative = os.path.relpath(ae_dir.resolve(), Path(stage2_dir).resolve())
    return {
        "autoencoder": {"path": Path(relative).as_posix(), "sha256": sha256_file(weights)},
        "latent_scale": float(latent_scale),
        "latent_scale_source": LATENT_SCALE_SOURCES[cfg.autoencoder.quantizer],
        "stack_slices": stack_slices_of(cfg),
    }


def stage1_latent_scale(cfg: Config, weights: dict[str, Tensor]) -> float:
    """``latent_scale`` of a stage-1 model from its config and weights, without building it.

    The same value as ``model.quantizer.latent_scale()`` (the coordinator holds the weights,
    not a model): from the codebook tensor (cosine) or from ``fsq_levels`` (fsq).
    """
    if cfg.autoencoder.quantizer == "fsq":
        return fsq_latent_scale(cfg.autoencoder.fsq_levels)
    return codebook_latent_scale(weights)


def codebook_latent_scale(weights: dict[str, Tensor]) -> float:
    """``latent_scale`` of a cosine-quantizer stage-1 checkpoint's weights, read from its
    codebook tensor (``CosineQuantizer.latent_scale()`` without building the model)."""
    if CODEBOOK_KEY not in weights:
        raise ValueError(f"stage-1 weights hold no {CODEBOOK_KEY!r}")
    return latent_scale_of_codebook(weights[CODEBOOK_KEY])


def _read_meta(root: Path) -> dict[str, Any]:
    path = root / META_FILE
    if not path.is_file():
        raise InputError(f"{path}: missing; {root} is not a finished checkpoint")
    meta = read_json_object(path, "checkpoint meta")
    if meta.get("stage") not in GENERATOR_STAGES:
        raise InputError(f"{path}: no valid 'stage' (expected {' or '.join(GENERATOR_STAGES)})")
    return meta


def _read_config(root: Path) -> Config:
    import yaml

    path = root / CONFIG_FILE
    if not path.is_file():
        raise InputError(f"{path}: missing; {root} is not a finished checkpoint")
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: invalid YAML ({exc})") from None
    try:
        return config_from_dict(tree if isinstance(tree, dict) else {}, str(path))
    except ConfigError as exc:
        raise InputError(str(exc)) from None


def load_checkpoint(checkpoint_dir: str | Path, *, verify: bool = True) -> Checkpoint:
    """Load a checkpoint folder; raises :class:`InputError` naming the missing/corrupt file."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        raise InputError(f"{root}: checkpoint folder does not exist")
    meta = _read_meta(root)
    cfg = _read_config(root)
    path = root / WEIGHTS_FILE
    if not path.is_file():
        raise InputError(f"{path}: missing weights file")
    if verify and meta.get("weights_sha256") and sha256_file(path) != meta["weights_sha256"]:
        raise InputError(f"{path}: SHA-256 does not match {root / META_FILE} (corrupt or replaced)")
    try:
        weights = load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types
        raise InputError(f"{path}: not a readable safetensors file ({exc})") from None
    return Checkpoint(root, cfg, weights, meta)


def load_autoencoder_of(stage2: Checkpoint) -> Checkpoint:
    """The stage-1 checkpoint a stage-2 checkpoint names, SHA-256 checked.

    The reference is resolved relatively to the stage-2 folder. Raises :class:`InputError`
    naming the stage-1 weights file when it is missing or differs from the recorded hash.
    """
    meta_path = stage2.root / META_FILE
    ref = stage2.meta.get("autoencoder")
    if not isinstance(ref, dict) or not {"path", "sha256"} <= ref.keys():
        raise InputError(
            f"{meta_path}: no 'autoencoder' reference ({{'path', 'sha256'}}); written by an older "
            "fedcmr4d? Train stage 2 again with this version"
        )
    ae_dir = stage2.root / str(ref["path"])
    weights = ae_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise InputError(
            f"{weights}: the stage-1 checkpoint named in {meta_path} (path {ref['path']!r}, "
            "relative to that folder) is missing; keep the run folder's stage-1 checkpoint "
            "beside its stage-2 checkpoint when moving it"
        )
    if sha256_file(weights) != ref["sha256"]:
        raise InputError(
            f"{weights}: SHA-256 differs from the one recorded in {meta_path} (stage-1 "
            "checkpoint replaced or modified after stage 2 was trained)"
        )
    ckpt = load_checkpoint(ae_dir)
    if ckpt.stage != "autoencoder":
        raise InputError(f"{ae_dir}: a {ckpt.stage} checkpoint, expected autoencoder")
    return ckpt


def save_trainer_state(out_dir: str | Path, state: dict[str, Any]) -> None:
    """Optimizer states and step counter for ``--resume`` (torch pickle, atomic)."""
    path = Path(out_dir) / TRAINER_STATE_FILE
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_trainer_state(out_dir: str | Path) -> dict[str, Any] | None:
    path = Path(out_dir) / TRAINER_STATE_FILE
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors
        raise InputError(f"{path}: unreadable trainer state ({exc})") from None
