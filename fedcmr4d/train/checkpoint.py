"""Checkpoints: ``model.safetensors`` + resolved ``config.yaml`` + ``meta.json``.

Every file is written to a temporary name and renamed; ``meta.json`` is written last and records
the SHA-256 of the weights file, so a folder whose meta is missing, or whose weights do not match
the meta, is never taken for a finished checkpoint.
"""

from __future__ import annotations

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
from fedcmr4d.stages import Stage

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
META_FILE = "meta.json"
TRAINER_STATE_FILE = "trainer_state.pt"


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
) -> Path:
    """Write a checkpoint into ``out_dir`` (created); returns the folder.

    Args:
        out_dir: checkpoint folder; files of an older checkpoint there are replaced.
        stage: "autoencoder" or "diffusion".
        cfg: the resolved config that made the weights.
        weights: name -> tensor (moved to CPU).
        meta: extra fields (step/round, privacy spent, for stage 2 ``autoencoder_checkpoint``,
            ``autoencoder_sha256`` and ``latent_scale``); ``stage``, ``code_version``,
            ``weights_sha256`` and ``config_name`` are added here.
    """
    if stage not in ("autoencoder", "diffusion"):
        raise ValueError(f"stage must be 'autoencoder' or 'diffusion', got {stage!r}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    _atomic_save_weights(root / WEIGHTS_FILE, weights)
    atomic_write_text(root / CONFIG_FILE, cfg.to_yaml())
    full_meta = {
        **(meta or {}),
        "stage": stage,
        "config_name": cfg.name,
        "code_version": code_version(),
        "weights_sha256": sha256_file(root / WEIGHTS_FILE),
    }
    atomic_write_json(root / META_FILE, full_meta)
    return root


def _read_meta(root: Path) -> dict[str, Any]:
    path = root / META_FILE
    if not path.is_file():
        raise InputError(f"{path}: missing; {root} is not a finished checkpoint")
    meta = read_json_object(path, "checkpoint meta")
    if meta.get("stage") not in ("autoencoder", "diffusion"):
        raise InputError(f"{path}: no valid 'stage' (expected autoencoder or diffusion)")
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
