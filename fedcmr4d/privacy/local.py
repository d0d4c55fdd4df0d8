"""The privacy hook for single-site training (``fedcmr4d train autoencoder|diffusion``).

The ledger lives in ``<out>/privacy.json`` (DESIGN.md): it is saved after every chunk of steps,
so ``--resume`` continues it. Stage 2 starts from stage 1's ``privacy.json`` (the
``--autoencoder`` folder), so the diffusion output's ε covers both stages, as a site's would.
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
    initial = None
    if Stage.parse(stage) is Stage.DIFFUSION and autoencoder_dir is not None:
        initial = Path(autoencoder_dir) / PRIVACY_FILE
        if not initial.is_file():
            log.warning(
                "%s: no %s: the autoencoder was not trained under DP at this site; the "
                "diffusion run's ε covers stage 2 only",
                autoencoder_dir,
                PRIVACY_FILE,
            )
    return SitePrivacy.open(
        cfg,
        len(train_ids),
        state_path=Path(out_dir) / PRIVACY_FILE,
        site=str(out_dir),
        initial_state=initial,
        local_total_steps=cfg.train.stage(Stage.parse(stage)).steps,
    )
