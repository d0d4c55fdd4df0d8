"""The privacy hook for single-site training (``fedcmr4d train autoencoder|diffusion``).

The ledger is the cohort's own (``<cohort>/.fedcmr4d/privacy-ledger.json``, see
:func:`fedcmr4d.privacy.accounting.open_cohort_ledger`): the same one federated rounds on that
cohort spend from, so a site's ε is one number whatever ran, and a new ``--out`` folder does not
start again at ε = 0. After every chunk of steps the run also writes ``<out>/privacy.json``
(DESIGN.md): the cohort ledger's state after this run, ε over everything spent on the cohort.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fedcmr4d.config import Config
from fedcmr4d.data.cohort import open_cohort
from fedcmr4d.privacy.accounting import PRIVACY_FILE
from fedcmr4d.privacy.site import SitePrivacy
from fedcmr4d.stages import Stage

log = logging.getLogger(__name__)


def local_site_privacy(
    cfg: Config,
    data_dir: str | Path,
    out_dir: str | Path,
    stage: Stage | str,
    *,
    autoencoder_dir: str | Path | None = None,
) -> SitePrivacy | None:
    """A :class:`SitePrivacy` for local training when ``privacy.enabled``, else ``None``."""
    if not cfg.privacy.enabled:
        return None
    from fedcmr4d.train.local import split_subjects

    ids = open_cohort(data_dir).subject_ids
    train_ids, _ = split_subjects(ids, cfg.data.holdout_fraction, cfg.seed)
    if Stage.parse(stage) is Stage.DIFFUSION and autoencoder_dir is not None:
        if not (Path(autoencoder_dir) / PRIVACY_FILE).is_file():
            log.warning(
                "%s: no %s: the autoencoder was not trained under DP at this site; ε does not "
                "cover it",
                autoencoder_dir,
                PRIVACY_FILE,
            )
    return SitePrivacy.open(
        cfg,
        len(train_ids),
        cohort=data_dir,
        report_dir=out_dir,
        site=Path(out_dir).name,
        local_total_steps=cfg.train.stage(Stage.parse(stage)).steps,
    )
