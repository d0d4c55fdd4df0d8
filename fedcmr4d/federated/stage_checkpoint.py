"""The coordinator's stage checkpoint: a stage's final global model for ``fedcmr4d sample``.

Moved whole out of ``server_app.py`` (the server_app split); :func:`save_stage_checkpoint` is
the one function that writes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord
from safetensors.numpy import load_file as load_file_numpy

from fedcmr4d.config import Config
from fedcmr4d.federated.records import numpy_to_weights, record_to_weights
from fedcmr4d.federated.state import ServerState


def save_stage_checkpoint(
    out_dir: Path,
    stage: str,
    cfg: Config,
    arrays: ArrayRecord,
    state: ServerState,
    evaluation: dict[str, Any],
    privacy: dict[str, Any] | None = None,
) -> None:
    """The stage's final global model in the trainer's checkpoint format (for ``sample``).

    The coordinator lays stages out as ``<out-dir>/autoencoder``, ``<out-dir>/diffusion`` and
    ``<out-dir>/segmenter`` (in the segmenter's own format: :func:`save_segmenter_checkpoint`); the
    diffusion checkpoint names ``../autoencoder`` relatively (the one writer,
    :func:`~fedcmr4d.train.checkpoint.save_checkpoint`), so the out-dir can be moved.

    ``privacy``: ``{"sites": {<site>: {<stage>: {"epsilon", "delta", "accountant"}}}}`` from the
    sites' training replies (:meth:`Coordinator.site_privacy`), written to ``meta["privacy"]``.
    """
    from fedcmr4d.train.checkpoint import WEIGHTS_FILE, save_checkpoint, stage1_latent_scale

    weights = record_to_weights(arrays)
    rounds = [r for r in state.history if r["stage"] == stage]
    epsilons = [r["train"]["epsilon"] for r in rounds if "epsilon" in r["train"]]
    meta: dict[str, Any] = {
        "federated": True,
        "round": len(rounds),
        "sites": sorted({s for r in rounds for s in r["accepted"]}),
        "holdout_metrics": evaluation["mean"],
        "epsilon_max_site": max(epsilons) if epsilons else None,
    }
    if privacy is not None:
        meta["privacy"] = privacy
    if stage == "segmenter":
        last = rounds[-1]["examples"] if rounds else {}
        meta["n_train_subjects"] = int(sum(last.values()))  # a count; ids stay at the sites
        save_segmenter_checkpoint(out_dir, cfg, weights, meta)
        return
    stage2: dict[str, Any] = {}
    if stage == "diffusion":
        ae_dir = out_dir.parent / "autoencoder"
        ae_weights = numpy_to_weights(load_file_numpy(ae_dir / WEIGHTS_FILE))
        stage2 = {"autoencoder": ae_dir, "latent_scale": stage1_latent_scale(cfg, ae_weights)}
    save_checkpoint(out_dir, stage=stage, cfg=cfg, weights=weights, meta=meta, **stage2)  # type: ignore[arg-type]


def save_segmenter_checkpoint(
    out_dir: Path, cfg: Config, weights: dict[str, Any], federated_meta: dict[str, Any]
) -> None:
    """The federated segmenter as a segmenter checkpoint folder (:mod:`fedcmr4d.evaluate.segmenter`)
    that ``label_cohort`` and ``evaluate --segmenter`` load unchanged.

    ``meta["privacy"]["dp"]`` records whether it was trained under DP-SGD: true only when every
    site whose update was averaged in reported (ε, δ) for the segmenter stage (a site's own node
    config decides its DP, so the coordinator's config alone cannot say); the sites' (ε, δ) sit
    beside it under ``sites``.
    """
    from fedcmr4d import __version__
    from fedcmr4d.evaluate.segmenter import KIND, NUM_CLASSES, build_segmenter, save_segmenter

    features = list(cfg.evaluate.segmenter_features)
    model = build_segmenter(features=features)
    own = {k[len("segmenter.") :]: v for k, v in weights.items() if k.startswith("segmenter.")}
    model.load_state_dict(own)  # strict: the keys are the trainer's
    rounds = int(federated_meta["round"])
    privacy = dict(federated_meta.get("privacy") or {})
    meta = {
        **federated_meta,
        "stage": "segmenter",
        "kind": KIND,
        "features": features,
        "num_classes": NUM_CLASSES,
        "steps": rounds * cfg.round_steps("segmenter"),
        "frame_shape": [cfg.data.image_size, cfg.data.image_size],
        "privacy": {**privacy, "dp": segmenter_was_dp(federated_meta)},
        "data": None,  # site data: no path leaves a site
        "code_version": __version__,
    }
    save_segmenter(model, out_dir, cfg, meta)


def segmenter_was_dp(federated_meta: dict[str, Any]) -> bool:
    """Whether every site averaged into the segmenter reported a segmenter (ε, δ).

    ``federated_meta["sites"]`` holds the reply labels ``<site> (node <id>)`` of the sites
    accepted in any round; ``federated_meta["privacy"]["sites"]`` the last (ε, δ) each site
    reported per stage.
    """
    from fedcmr4d.federated.audit_stage import site_label
    from fedcmr4d.pipelines.labelling import segmenter_privacy_sites

    names = {site_label(str(label)) for label in federated_meta.get("sites") or []}
    return bool(names) and names <= set(segmenter_privacy_sites(federated_meta))
