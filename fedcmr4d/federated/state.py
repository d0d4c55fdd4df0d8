"""The coordinator's checkpoint: global weights, strategy state, round and run config.

Saved after every round so that a killed ServerApp can continue with ``resume = true`` at the next
round, and no round is counted twice. A checkpoint is a folder under ``<out-dir>/server-state/``
holding ``state.json``, ``global.safetensors`` (the current stage's global weights),
``strategy.safetensors`` (e.g. FedAdam moments) and, once stage 1 is done, ``autoencoder
.safetensors``. The folder is written under a temporary name, renamed, and only then named in
``LATEST`` (itself replaced atomically), so a crash at any point leaves the previous checkpoint
in force.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from fedcmr4d.errors import ConfigError, InputError
from fedcmr4d.io import atomic_write_text

STATE_DIR = "server-state"
LATEST = "LATEST"


@dataclass
class ServerState:
    """Where a federated run stands after its last completed round.

    Attributes:
        stage: the stage the last completed round belonged to.
        round: rounds completed in ``stage`` (0: the stage has not started).
        completed_stages: stages whose every planned round is done.
        run_config: the run config that started the run (kebab-case keys).
        config_yaml: the resolved training config sent to every site.
        history: one metrics row per completed round, across stages, in order.
        strategy_scalars: scalar strategy state (e.g. FedOpt's scalars).
        declared_examples: site name -> the ``num-examples`` it declared in its first
            accepted training reply (later replies must match it).
    """

    stage: str
    round: int = 0
    completed_stages: list[str] = field(default_factory=list)
    run_config: dict[str, Any] = field(default_factory=dict)
    config_yaml: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    strategy_scalars: dict[str, float] = field(default_factory=dict)
    declared_examples: dict[str, float] = field(default_factory=dict)


@dataclass
class Snapshot:
    """A checkpoint read back: state plus arrays (name -> array)."""

    state: ServerState
    global_weights: dict[str, np.ndarray]
    strategy_arrays: dict[str, np.ndarray]
    autoencoder: dict[str, np.ndarray] | None


def _save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))


def save_snapshot(out_dir: Path, snapshot: Snapshot) -> Path:
    """Write a new checkpoint folder, point ``LATEST`` at it, drop older folders.

    Returns:
        The new checkpoint folder.
    """
    root = Path(out_dir) / STATE_DIR
    root.mkdir(parents=True, exist_ok=True)
    state = snapshot.state
    name = f"{len(state.history):05d}-{state.stage}-r{state.round}-{uuid.uuid4().hex[:6]}"
    tmp = root / f".tmp-{name}"
    tmp.mkdir()
    try:
        _save_arrays(tmp / "global.safetensors", snapshot.global_weights)
        _save_arrays(tmp / "strategy.safetensors", snapshot.strategy_arrays)
        if snapshot.autoencoder is not None:
            _save_arrays(tmp / "autoencoder.safetensors", snapshot.autoencoder)
        (tmp / "state.json").write_text(json.dumps(asdict(state), indent=1, sort_keys=True))
        final = root / name
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(root / LATEST, name + "\n")
    for old in root.iterdir():
        if old.is_dir() and old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_snapshot(out_dir: Path) -> Snapshot | None:
    """The checkpoint named in ``LATEST``, or None when the folder has none."""
    root = Path(out_dir) / STATE_DIR
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    folder = root / pointer.read_text().strip()
    try:
        raw = json.loads((folder / "state.json").read_text())
        state = ServerState(**raw)
        weights = load_file(str(folder / "global.safetensors"))
        strategy_arrays = load_file(str(folder / "strategy.safetensors"))
        ae_path = folder / "autoencoder.safetensors"
        autoencoder = load_file(str(ae_path)) if ae_path.is_file() else None
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"{folder}: unreadable server checkpoint ({exc})") from None
    return Snapshot(state, weights, strategy_arrays, autoencoder)


def check_resumable(snapshot: Snapshot, run_config: dict[str, Any], config_yaml: str) -> None:
    """Refuse to resume a run whose stages, rounds or training config changed.

    Only ``resume`` may differ between the first start and a resume.
    """
    volatile = {"resume"}
    before = {k: v for k, v in snapshot.state.run_config.items() if k not in volatile}
    now = {k: v for k, v in run_config.items() if k not in volatile}
    changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    if changed:
        raise ConfigError(f"resume: run config differs from the checkpointed run in {changed}")
    if snapshot.state.config_yaml != config_yaml:
        raise ConfigError("resume: the training config differs from the checkpointed run")
