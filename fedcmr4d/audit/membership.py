"""Membership inference on the model's own loss: the second test of the audit.

A model that memorised its training subjects fits them better than unseen ones. At each site the
model scores every subject of its split by its own loss -- stage 2: the diffusion loss at fixed
(timestep, noise) draws (``audit.membership_draws`` per latent stack, the same for the j-th
stack of every subject), averaged; stage 1: the L1 reconstruction error -- and the attack
"member when the loss is low" is measured by:

- ``auc``: P(holdout loss > training loss), ties one half: the Mann-Whitney U of the holdout
  losses against the training losses divided by ``n_members * n_nonmembers`` (0.5 = chance);
- ``tpr_at_1pct_fpr``: the share of training subjects whose loss is below the loss that only 1 %
  of holdout subjects reach (with < 100 holdout subjects: below the smallest holdout loss);
- ``p_value``: one-sided ``scipy.stats.mannwhitneyu(holdout, train, alternative="greater")``.

What leaves a site (per stage): ``n_members``, ``n_nonmembers``, ``u`` (one rank statistic),
its ``p_value`` and the count behind ``tpr_at_1pct_fpr`` -- never a per-subject loss. Sites are
pooled as a stratified (van Elteren) test: ``AUC = sum U / sum m n``, ``z = (sum U - sum m n / 2)
/ sqrt(sum m n (m + n + 1) / 12)``, one-sided normal p-value (one site: its exact p-value).

The test fails when a stage's p-value is below ``audit.membership_alpha / stages``; for a model
that memorised nothing (members and non-members exchangeable) this happens with probability at
most ``membership_alpha`` (the false-alarm rate).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats
import torch

from fedcmr4d.config import AuditConfig, Config
from fedcmr4d.errors import InputError

#: Fixed seed of the (timestep, noise) draws: every subject sees the same ones.
DRAW_SEED = 20_250_514


#: Upper bound on latent-stack elements scored in one denoiser call (batch = bound / stack size).
SCORE_BATCH_ELEMENTS = 1 << 21


@torch.no_grad()
def subject_scores(
    cfg: Config,
    cohort_dir: str | Path,
    subject_ids: Sequence[str],
    *,
    autoencoder: Any,
    unet: Any = None,
    latent_scale: float = 1.0,
    draws: int = 4,
) -> dict[str, np.ndarray]:
    """Per-subject losses: ``autoencoder`` (L1 reconstruction) and, with a denoiser,
    ``diffusion`` (mean Huber loss over ``draws`` fixed draws per latent stack). Stays at the
    site.

    The draws are made once (:func:`fixed_draws`): the j-th stack of every subject is scored at
    the same ``draws`` (noise, timestep) pairs, so two subjects' losses differ by their data
    alone. Every (subject, stack, draw) term is then scored in batches of the denoiser.
    """
    from fedcmr4d.data.datasets import cine_slices, load_cines
    from fedcmr4d.schedulers import build_train_scheduler
    from fedcmr4d.train.models import stack_slices_of

    if not subject_ids:
        return {"autoencoder": np.zeros(0), **({"diffusion": np.zeros(0)} if unet else {})}
    _, cines = load_cines(
        cohort_dir, list(subject_ids), image_size=cfg.data.image_size, frames=cfg.data.frames
    )
    recon, stacks = [], []
    s = stack_slices_of(cfg)
    for group in _element_groups(cines):
        x = torch.cat([cine_slices(c) for c in group])  # every slice of the group's subjects
        errors = torch.abs(autoencoder(x).reconstruction.float().clamp(0, 1) - x)
        codes = autoencoder.encode_stage_2_inputs(x) * latent_scale if unet is not None else None
        start = 0
        for cine in group:
            z = cine.shape[2]
            recon.append(float(torch.mean(errors[start : start + z])))
            if codes is not None:
                whole = z - z % s  # the subject's whole stacks of s consecutive slices
                mine = codes[start : start + whole]
                stacks.append(mine.reshape(whole // s, s * mine.shape[1], *mine.shape[2:]))
            start += z
    scores = {"autoencoder": np.asarray(recon)}
    if unet is not None:
        scheduler = build_train_scheduler(cfg.diffusion)
        delta = cfg.diffusion.huber_delta
        scores["diffusion"] = stack_losses(unet, scheduler, stacks, draws, delta)
    return scores


def _element_groups(cines: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
    """Consecutive subjects, at most :data:`SCORE_BATCH_ELEMENTS` voxels a group (>= 1)."""
    groups: list[list[np.ndarray]] = [[]]
    size = 0
    for cine in cines:
        if groups[-1] and size + cine.size > SCORE_BATCH_ELEMENTS:
            groups.append([])
            size = 0
        groups[-1].append(cine)
        size += cine.size
    return groups


def fixed_draws(
    shape: Sequence[int], stacks: int, draws: int, num_timesteps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(stacks, draws, *shape) noise and (stacks, draws) timesteps from :data:`DRAW_SEED`."""
    generator = torch.Generator().manual_seed(DRAW_SEED)
    noise = torch.randn((stacks, draws, *shape), generator=generator)
    timesteps = torch.randint(0, num_timesteps, (stacks, draws), generator=generator)
    return noise, timesteps


@torch.no_grad()
def stack_losses(
    unet: Any, scheduler: Any, stacks: Sequence[torch.Tensor], draws: int, huber_delta: float
) -> np.ndarray:
    """Each subject's mean diffusion loss over its (K_i, C, h, w, t) ``stacks``, ``draws``
    fixed draws per stack (a subject without a whole stack: NaN)."""
    from fedcmr4d.models.losses import diffusion_losses_at

    most = max((int(x.shape[0]) for x in stacks), default=0)
    if most == 0:
        return np.full(len(stacks), np.nan)
    shape = next(x.shape[1:] for x in stacks if x.shape[0])
    noise, timesteps = fixed_draws(shape, most, draws, scheduler.num_train_timesteps)
    owner = torch.cat([torch.full((x.shape[0] * draws,), i) for i, x in enumerate(stacks)])
    clean = torch.cat([x.repeat_interleave(draws, dim=0) for x in stacks])
    noise_of = torch.cat([noise[: x.shape[0]].flatten(0, 1) for x in stacks])
    time_of = torch.cat([timesteps[: x.shape[0]].flatten() for x in stacks])
    batch = max(1, SCORE_BATCH_ELEMENTS // max(1, shape.numel()))
    losses = torch.cat(
        [
            diffusion_losses_at(
                unet,
                scheduler,
                clean[i : i + batch],
                noise_of[i : i + batch],
                time_of[i : i + batch],
                huber_delta,
            )
            for i in range(0, clean.shape[0], batch)
        ]
    ).double()
    total = torch.zeros(len(stacks), dtype=torch.float64).index_add_(0, owner, losses)
    count = torch.bincount(owner, minlength=len(stacks)).double()
    return (total / count).numpy()  # 0 / 0: NaN for a subject without a stack


def stage_aggregate(members: np.ndarray, nonmembers: np.ndarray) -> dict[str, Any]:
    """One stage's aggregates at one site (what may leave it)."""
    m, n = len(members), len(nonmembers)
    if m == 0 or n == 0:
        return {"n_members": m, "n_nonmembers": n, "u": None, "p_value": None, "tpr_count": 0}
    test = scipy.stats.mannwhitneyu(nonmembers, members, alternative="greater")
    allowed = int(math.floor(0.01 * n))
    bar = float(np.sort(nonmembers)[allowed])
    return {
        "n_members": m,
        "n_nonmembers": n,
        "u": float(test.statistic),
        "p_value": float(test.pvalue),
        "tpr_count": int(np.sum(members < bar)),
    }


def site_membership(
    member_scores: dict[str, np.ndarray], nonmember_scores: dict[str, np.ndarray]
) -> dict[str, Any]:
    """``{"stages": {stage: aggregate}}`` for every stage scored."""
    return {
        "stages": {
            stage: stage_aggregate(member_scores[stage], nonmember_scores.get(stage, np.zeros(0)))
            for stage in sorted(member_scores)
        }
    }


def check_site_membership(site: str, payload: dict[str, Any], n_train: int, n_holdout: int) -> None:
    """Plausibility of a site's aggregates; :class:`InputError` naming the site."""
    for stage, agg in payload.get("stages", {}).items():
        m, n, u = agg.get("n_members"), agg.get("n_nonmembers"), agg.get("u")
        if m != n_train or n != n_holdout:
            raise InputError(
                f"site {site}: membership {stage} counts {m}/{n} != split {n_train}/{n_holdout}"
            )
        if u is not None and not (0.0 <= float(u) <= m * n):
            raise InputError(f"site {site}: membership {stage} U={u} outside [0, {m * n}]")
        p = agg.get("p_value")
        if p is not None and not (0.0 <= float(p) <= 1.0):
            raise InputError(f"site {site}: membership {stage} p-value {p} outside [0, 1]")
        if not (0 <= int(agg.get("tpr_count", 0)) <= m):
            raise InputError(f"site {site}: membership {stage} tpr count outside [0, {m}]")


def combine_membership(
    payloads: Sequence[dict[str, Any] | None], config: AuditConfig
) -> dict[str, Any] | None:
    """Pool sites' aggregates into ``audit.json``'s ``membership`` (None: no model was given)."""
    given = [p for p in payloads if p is not None]
    if not given:
        return None
    stages = sorted({s for p in given for s in p.get("stages", {})})
    per_stage: dict[str, dict[str, Any]] = {}
    for stage in stages:
        aggs = [p["stages"][stage] for p in given if stage in p.get("stages", {})]
        aggs = [a for a in aggs if a["u"] is not None]
        if not aggs:
            continue
        u = sum(a["u"] for a in aggs)
        mn = sum(a["n_members"] * a["n_nonmembers"] for a in aggs)
        if len(aggs) == 1:
            p_value = float(aggs[0]["p_value"])
        else:
            var = sum(
                a["n_members"] * a["n_nonmembers"] * (a["n_members"] + a["n_nonmembers"] + 1) / 12
                for a in aggs
            )
            p_value = float(scipy.stats.norm.sf((u - mn / 2) / math.sqrt(var)))
        members = sum(a["n_members"] for a in aggs)
        per_stage[stage] = {
            "auc": u / mn,
            "tpr_at_1pct_fpr": sum(a["tpr_count"] for a in aggs) / members,
            "n_members": members,
            "n_nonmembers": sum(a["n_nonmembers"] for a in aggs),
            "p_value": p_value,
        }
    if not per_stage:
        return None
    worst = min(per_stage, key=lambda s: per_stage[s]["p_value"])
    bar = config.membership_alpha / len(per_stage)
    passed = all(v["p_value"] >= bar for v in per_stage.values())
    figures = per_stage[worst]
    return {
        **{k: figures[k] for k in ("auc", "tpr_at_1pct_fpr", "n_members", "n_nonmembers")},
        "p_value": figures["p_value"],
        "stage": worst,
        "stages": per_stage,
        "alpha": config.membership_alpha,
        "passed": passed,
        "reason": ""
        if passed
        else (
            f"membership inference on the {worst} loss beats chance: AUC "
            f"{figures['auc']:.3f}, one-sided Mann-Whitney p = {figures['p_value']:.2g} < "
            f"{config.membership_alpha} / {len(per_stage)}"
        ),
        "method": "per-subject loss (diffusion: fixed timestep/noise draws; autoencoder: L1 "
        "reconstruction), training vs holdout; Mann-Whitney U pooled over sites (van Elteren)",
    }


def load_models(checkpoint_dir: str | Path) -> tuple[Config, Any, Any, float]:
    """(cfg, autoencoder, unet or None, latent scale) from a stage-2 or stage-1 checkpoint."""
    from fedcmr4d.train.checkpoint import load_checkpoint
    from fedcmr4d.train.trainer import load_frozen_autoencoder

    ckpt = load_checkpoint(checkpoint_dir)
    if ckpt.stage == "diffusion":
        from fedcmr4d.pipelines.generation import load_generator

        gen = load_generator(checkpoint_dir, "cpu")
        return gen.cfg, gen.autoencoder, gen.unet, gen.latent_scale
    if ckpt.stage != "autoencoder":
        raise InputError(f"{checkpoint_dir}: unknown checkpoint stage {ckpt.stage!r}")
    return ckpt.cfg, load_frozen_autoencoder(ckpt.cfg, ckpt.weights), None, 1.0


def membership_from_checkpoint(
    checkpoint_dir: str | Path,
    train_dirs: Sequence[str | Path],
    holdout_dirs: Sequence[str | Path],
    config: AuditConfig,
) -> dict[str, Any]:
    """The local form: score every subject of the given folders with the checkpoint's model."""
    from fedcmr4d.data.cohort import open_cohort

    cfg, autoencoder, unet, scale = load_models(checkpoint_dir)

    def scores(dirs: Sequence[str | Path]) -> dict[str, np.ndarray]:
        parts = [
            subject_scores(
                cfg,
                d,
                list(open_cohort(d).subject_ids),
                autoencoder=autoencoder,
                unet=unet,
                latent_scale=scale,
                draws=config.membership_draws,
            )
            for d in dirs
        ]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}

    return site_membership(scores(train_dirs), scores(holdout_dirs))
