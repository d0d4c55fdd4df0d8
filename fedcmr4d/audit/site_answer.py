"""A site's answer to a federated audit query (no Flower here; docs/privacy.md, "The audit
protocol").

The coordinator's query (:class:`AuditQuery`) names the synthetic cohort by the SHA-256 of each
of its files, carries the files (or, in simulation, a folder the site can read), the global
stage-2 weights, the digest of the stage-1 model and the sampling seed and batch size. The site:

1. refuses a query past its ``max-audits`` for this model (a counter per model digest in its
   state folder; counted before anything is computed, so a failing query still counts);
2. copies the files into its own inbox and checks every SHA-256 against the query (the set of
   files must match exactly);
3. checks that the stage-2 weights have the digest the query names and takes the stage-1 model
   from its own kept copy (the one it trained stage 2 with, by digest);
4. with ``audit.verify_resample`` (site config), samples the whole cohort again from those
   weights, seed and batch size and refuses a cohort whose cines differ (sampling is
   deterministic): a "synthetic" cohort that holds any real scan is not this model's output;
5. computes its copy flags, DCR bits, threshold and membership aggregates with the audit
   settings of its OWN installed config (:func:`answer_query`'s ``audit_config``).

Only :class:`fedcmr4d.audit.memorization.SiteAnswer` leaves: bits, threshold, counts, rank
statistics. The hostile-coordinator case -- a probe cohort holding a training patient's scan --
is refused at step 4, and bounded by step 1 when re-sampling is switched off.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from fedcmr4d.config import AuditConfig, Config
from fedcmr4d.errors import ConfigError, InputError
from fedcmr4d.io import atomic_write_json, read_json_object, sha256_file, weights_digest
from fedcmr4d.privacy.policy import PREFIX, PolicyRefusal

COUNTER_FILE = "audit-queries.json"
#: Queries a site answers per model unless its node config sets `max-audits`.
DEFAULT_MAX_AUDITS = 3
#: Largest absolute voxel difference between a re-sampled cine and the received one.
RESAMPLE_TOLERANCE = 1e-4


class AuditRefused(PolicyRefusal):
    """The site will not answer this query (the reason names the check that failed).

    A policy refusal, so the coordinator sees its one line (``site policy: audit query: ...``,
    synthetic names only) rather than an opaque error id; a line naming a file path still leaves
    only as a category (:mod:`fedcmr4d.federated.outbound`).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason if reason.startswith(PREFIX) else f"{PREFIX} {reason}")


@dataclass
class AuditQuery:
    """What the coordinator sends (JSON in the message's ``audit-query`` config).

    Attributes:
        files: relative path -> SHA-256 of every file of the synthetic cohort.
        model_digest: :func:`weights_digest` of the stage-2 weights sent with the query.
        autoencoder_digest: digest of the stage-1 model those weights decode with.
        seed, batch_size, slicewise, use_ema: how the cohort was sampled (its provenance).
        n_sites: K, the sites that trained (Bonferroni factor; below 1 counts as 1).
        synthetic_path: simulation only: a folder the site may read instead of file bytes.
    """

    files: dict[str, str]
    model_digest: str
    autoencoder_digest: str
    seed: int
    batch_size: int
    n_sites: int = 1
    slicewise: bool = False
    use_ema: bool = True
    synthetic_path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AuditQuery:
        try:
            payload = json.loads(text)
            query = cls(**payload)
        except (TypeError, ValueError) as exc:
            raise InputError(f"audit query: malformed ({exc})") from None
        for rel in query.files:
            path = PurePosixPath(rel)
            if path.is_absolute() or ".." in path.parts or not path.parts:
                raise AuditRefused(f"audit query: file name {rel!r} is not a relative path")
        return query


def count_query(state_dir: Path, model_digest: str, max_audits: int) -> int:
    """Count this query against ``max-audits`` for the model; refuse past the limit."""
    path = Path(state_dir) / COUNTER_FILE
    counts: dict[str, Any] = read_json_object(path, "audit counter") if path.is_file() else {}
    done = int(counts.get(model_digest, 0))
    if done >= max_audits:
        raise AuditRefused(
            f"site policy: max-audits: query {done + 1} for model {model_digest[:12]} asked, "
            f"limit {max_audits}"
        )
    counts[model_digest] = done + 1
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, counts)
    return done + 1


def receive_files(query: AuditQuery, blobs: dict[str, bytes] | None, inbox: Path) -> Path:
    """Copy the cohort into ``inbox`` (from bytes or the readable folder) and check hashes."""
    if inbox.exists():
        shutil.rmtree(inbox)
    inbox.mkdir(parents=True)
    source = Path(query.synthetic_path) if query.synthetic_path else None
    if blobs is not None and set(blobs) != set(query.files):
        raise AuditRefused("audit query: the files sent are not the files the query hashes")
    for rel, expected in sorted(query.files.items()):
        target = inbox / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if blobs is not None:
            target.write_bytes(blobs[rel])
        elif source is not None and (source / rel).is_file():
            shutil.copyfile(source / rel, target)
        else:
            raise AuditRefused(f"audit query: file {rel} was neither sent nor readable")
        if sha256_file(target) != expected:
            raise AuditRefused(f"audit query: {rel}: SHA-256 differs from the query's")
    return inbox


def verify_resampled(gen: Any, cohort: Any, query: AuditQuery) -> None:
    """Re-sample every subject and compare with the received cines (AuditRefused if not)."""
    from fedcmr4d.pipelines.generation import generate_subjects

    ids = list(cohort.subject_ids)
    expected = [f"synth{i:04d}" for i in range(len(ids))]
    if ids != expected:
        raise AuditRefused("audit query: subject ids are not those the sampler writes")
    for subject_id, cine in generate_subjects(
        gen, len(ids), seed=query.seed, batch_size=query.batch_size, slicewise=query.slicewise
    ):
        received = cohort.load(subject_id, with_labels=False).cine
        if received.shape != cine.shape or float(np.max(np.abs(received - cine))) > (
            RESAMPLE_TOLERANCE
        ):
            raise AuditRefused(
                f"audit query: synthetic subject {subject_id} is not what model "
                f"{query.model_digest[:12]} samples with seed {query.seed}: refused"
            )


def build_generator(
    cfg: Config,
    diffusion: dict[str, torch.Tensor],
    autoencoder: dict[str, torch.Tensor],
    *,
    use_ema: bool,
) -> Any:
    """A :class:`fedcmr4d.pipelines.generation.Generator4D` from weights the site checked."""
    from fedcmr4d.pipelines.generation import assemble_generator

    try:
        return assemble_generator(
            cfg, diffusion, autoencoder, use_ema=use_ema, device=torch.device("cpu")
        )
    except RuntimeError as exc:
        raise AuditRefused(
            f"audit query: stage-2 weights do not match the config ({exc})"
        ) from None


def answer_query(
    query: AuditQuery,
    blobs: dict[str, bytes] | None,
    *,
    model_cfg: Config,
    diffusion: dict[str, torch.Tensor],
    autoencoder: dict[str, torch.Tensor],
    site: str,
    cohort_dir: Path,
    train_ids: list[str],
    holdout_ids: list[str],
    state_dir: Path,
    audit_config: AuditConfig,
    max_audits: int,
) -> dict[str, Any]:
    """The whole site side; returns ``SiteAnswer.to_dict()`` plus the model digest.

    Args:
        query: the coordinator's query.
        blobs: the cohort's files by relative path (None: read ``query.synthetic_path``).
        model_cfg: the model's config (architecture of the weights; not the audit settings).
        diffusion: stage-2 weights received with the query (digest checked here).
        autoencoder: stage-1 weights from the site's own kept copy (digest checked by caller).
        site, cohort_dir, train_ids, holdout_ids: the site and its split (stays here).
        state_dir: the site's state folder (counter, inbox).
        audit_config: the site's OWN audit settings.
        max_audits: the site policy's limit per model.
    """
    from fedcmr4d.audit.features import represent_cohort
    from fedcmr4d.audit.membership import site_membership, subject_scores
    from fedcmr4d.audit.memorization import (
        grid_from_config,
        site_answer_from_reps,
        synthetic_fov_mm,
    )
    from fedcmr4d.data.cohort import open_cohort

    arrays = {k: v.detach().cpu().numpy() for k, v in diffusion.items()}
    if weights_digest(arrays) != query.model_digest:
        raise AuditRefused("audit query: the stage-2 weights sent do not match model_digest")
    count_query(state_dir, query.model_digest, max_audits)
    inbox = receive_files(query, blobs, Path(state_dir) / "audit-inbox")
    try:
        synthetic = open_cohort(inbox)
        gen = build_generator(model_cfg, diffusion, autoencoder, use_ema=query.use_ema)
        if audit_config.verify_resample:
            verify_resampled(gen, synthetic, query)
        fov = min(audit_config.fov_mm, synthetic_fov_mm(inbox, synthetic.subject_ids))
        grid = grid_from_config(audit_config, fov)
        ids, syn_reps = represent_cohort(synthetic, grid)
        own = open_cohort(cohort_dir)
        _, train = represent_cohort(own, grid, train_ids)
        _, holdout = represent_cohort(own, grid, holdout_ids)

        def scores(subject_ids: list[str]) -> dict[str, np.ndarray]:
            return subject_scores(
                model_cfg,
                cohort_dir,
                subject_ids,
                autoencoder=gen.autoencoder,
                unet=gen.unet,
                latent_scale=gen.latent_scale,
                draws=audit_config.membership_draws,
            )

        membership = site_membership(scores(train_ids), scores(holdout_ids))
        answer, _ = site_answer_from_reps(
            ids,
            syn_reps,
            train,
            holdout,
            grid=grid,
            config=audit_config,
            site=site,
            n_sites=query.n_sites,
            membership=membership,
        )
    finally:
        shutil.rmtree(inbox, ignore_errors=True)
    return {"answer": answer.to_dict(), "model_digest": query.model_digest}


def site_audit_config(node_config: dict[str, Any]) -> tuple[AuditConfig, int]:
    """The site's own audit settings and ``max-audits`` from its node config.

    ``audit-config``: a config name or YAML path whose ``audit:`` section the site uses
    (default: :class:`AuditConfig` defaults); ``max-audits``: queries answered per model
    (default :data:`DEFAULT_MAX_AUDITS`). The coordinator's message sets neither.
    """
    from fedcmr4d.config import load_config

    name = node_config.get("audit-config")
    audit_config = load_config(str(name)).audit if name else AuditConfig()
    raw = node_config.get("max-audits", DEFAULT_MAX_AUDITS)
    try:
        max_audits = int(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"node config: max-audits: expected an integer, got {raw!r}") from None
    if max_audits < 0:
        raise ConfigError(f"node config: max-audits: must be >= 0, got {max_audits}")
    return audit_config, max_audits


def answer_from_message_parts(
    *,
    query_json: str,
    names: list[str] | None,
    blobs: list[bytes] | None,
    model_cfg: Config,
    diffusion: dict[str, torch.Tensor],
    site: str,
    cohort_dir: Path,
    train_ids: list[str],
    holdout_ids: list[str],
    state_dir: Path,
    node_config: dict[str, Any],
) -> dict[str, Any]:
    """What the ClientApp handler calls with the message's parts unpacked."""
    from fedcmr4d.federated.stage1_delivery import resolve_autoencoder

    query = AuditQuery.from_json(query_json)
    audit_config, max_audits = site_audit_config(node_config)
    files = None
    if names is not None and blobs is not None:
        if len(names) != len(blobs):
            raise AuditRefused("audit query: file names and contents differ in number")
        files = {str(n): bytes(b) for n, b in zip(names, blobs, strict=True)}
    autoencoder = resolve_autoencoder(None, query.autoencoder_digest, state_dir)
    if autoencoder is None:
        raise AuditRefused("audit query: names no stage-1 model")
    return answer_query(
        query,
        files,
        model_cfg=model_cfg,
        diffusion=diffusion,
        autoencoder=autoencoder,
        site=site,
        cohort_dir=cohort_dir,
        train_ids=train_ids,
        holdout_ids=holdout_ids,
        state_dir=state_dir,
        audit_config=audit_config,
        max_audits=max_audits,
    )
