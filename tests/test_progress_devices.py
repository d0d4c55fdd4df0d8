"""The one device rule and the one progress-bar factory."""

from __future__ import annotations

import pytest
import torch
from rich.progress import Progress

from fedcmr4d.devices import resolve_device
from fedcmr4d.progress import make_progress, progress_bar


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")


def test_progress_bar_on_and_off() -> None:
    with progress_bar(False) as bar:
        assert bar is None
    with progress_bar(True) as bar:
        assert isinstance(bar, Progress)
        task = bar.add_task("x", total=2)
        bar.advance(task)
        assert bar.tasks[0].completed == 1
    with make_progress(item=True) as bar:
        bar.add_task("y", total=1, current="subject-1")
        assert "subject-1" in str(bar.tasks[0].fields)
