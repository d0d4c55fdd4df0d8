"""The trainer-privacy contract is a typed protocol: mypy and the loop both refuse a gap."""

from __future__ import annotations

from pathlib import Path

from mypy import api

from fedcmr4d.config import load_config
from fedcmr4d.privacy.protocol import PRIVACY_METHODS, Privacy
from fedcmr4d.privacy.site import SitePrivacy

ROOT = Path(__file__).resolve().parents[2]

SNIPPET = """
from __future__ import annotations
from collections.abc import Mapping
import torch
from torch import nn
from fedcmr4d.privacy.engine import SubjectDP
from fedcmr4d.privacy.protocol import Privacy
from fedcmr4d.stages import Stage

class Complete:
    def attach(self, stage: Stage, *, models: Mapping[str, nn.Module], n_subjects: int,
               start_step: int, device: torch.device) -> SubjectDP:
        raise NotImplementedError
    def before_train(self, stage: Stage, *, steps: int, start_step: int) -> None: ...
    def after_train(self) -> dict[str, float]:
        return {}
    def checkpoint_meta(self) -> dict[str, object]:
        return {}

class NoAfterTrain:
    def attach(self, stage: Stage, *, models: Mapping[str, nn.Module], n_subjects: int,
               start_step: int, device: torch.device) -> SubjectDP:
        raise NotImplementedError
    def before_train(self, stage: Stage, *, steps: int, start_step: int) -> None: ...
    def checkpoint_meta(self) -> dict[str, object]:
        return {}

ok: Privacy = Complete()
gap: Privacy = NoAfterTrain()
"""


def test_mypy_catches_a_missing_privacy_method(tmp_path: Path) -> None:
    snippet = tmp_path / "snippet.py"
    snippet.write_text(SNIPPET)
    protocol = ROOT / "fedcmr4d" / "privacy" / "protocol.py"
    # imports outside the two files are skipped (Any): fast, and enough to check method names
    out, err, status = api.run(
        [
            "--follow-imports=skip",
            "--ignore-missing-imports",
            "--no-incremental",
            str(protocol),
            str(snippet),
        ]
    )
    assert status == 1, out + err
    errors = [line for line in out.splitlines() if ": error:" in line]
    gap_line = SNIPPET.splitlines().index("gap: Privacy = NoAfterTrain()") + 1
    assert len(errors) == 1 and f"snippet.py:{gap_line}:" in errors[0], out  # `gap` only
    assert 'missing following "Privacy" protocol member' in out and "after_train" in out


def test_site_privacy_is_a_privacy_at_run_time() -> None:
    site = SitePrivacy.open(load_config("tiny-dp"), 6, seed=0)
    assert isinstance(site, Privacy)
    assert set(PRIVACY_METHODS) <= set(dir(site))
