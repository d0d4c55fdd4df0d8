"""The coordinator's checkpoint: atomic folders, LATEST pointer, resume checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedcmr4d.errors import ConfigError
from fedcmr4d.federated.state import (
    LATEST,
    STATE_DIR,
    ServerState,
    Snapshot,
    check_resumable,
    load_snapshot,
    save_snapshot,
)


def _snapshot(round_: int) -> Snapshot:
    state = ServerState(
        stage="autoencoder",
        round=round_,
        run_config={"config": "tiny", "resume": False},
        config_yaml="name: tiny\n",
        history=[{"stage": "autoencoder", "round": r} for r in range(1, round_ + 1)],
        strategy_scalars={"outer/clipping_norm": 0.5},
    )
    weights = {"w": np.full((2, 2), float(round_), np.float32)}
    return Snapshot(state, weights, {"outer/m_t/w": np.ones((2, 2), np.float32)}, None)


def test_no_checkpoint_is_none(tmp_path: Path) -> None:
    assert load_snapshot(tmp_path) is None


def test_latest_snapshot_wins_and_old_ones_go(tmp_path: Path) -> None:
    save_snapshot(tmp_path, _snapshot(1))
    newest = save_snapshot(tmp_path, _snapshot(2))
    folders = [p for p in (tmp_path / STATE_DIR).iterdir() if p.is_dir()]
    assert folders == [newest]
    back = load_snapshot(tmp_path)
    assert back is not None
    assert back.state.round == 2 and len(back.state.history) == 2
    assert back.global_weights["w"][0, 0] == 2.0
    assert back.strategy_arrays["outer/m_t/w"].shape == (2, 2)
    assert back.state.strategy_scalars == {"outer/clipping_norm": 0.5}
    assert back.autoencoder is None


def test_half_written_folder_is_ignored(tmp_path: Path) -> None:
    save_snapshot(tmp_path, _snapshot(1))
    # A crash while writing the next checkpoint leaves a temporary folder and the old pointer.
    (tmp_path / STATE_DIR / ".tmp-00002-autoencoder-r2-abc").mkdir()
    back = load_snapshot(tmp_path)
    assert back is not None and back.state.round == 1
    assert (tmp_path / STATE_DIR / LATEST).read_text().strip().startswith("00001")


def test_resume_refuses_a_changed_run(tmp_path: Path) -> None:
    snap = _snapshot(1)
    check_resumable(snap, {"config": "tiny", "resume": True}, "name: tiny\n")
    with pytest.raises(ConfigError, match="config"):
        check_resumable(snap, {"config": "paper", "resume": True}, "name: tiny\n")
    with pytest.raises(ConfigError, match="training config differs"):
        check_resumable(snap, {"config": "tiny", "resume": True}, "name: other\n")
