"""The federated memorization audit (run-config stage ``audit``), coordinator side.

The coordinator samples a synthetic cohort from the stage-2 checkpoint (or takes
``synthetic-dir``) and sends every connected site one ``query.audit`` message
(docs/privacy.md, "The audit protocol"): the cohort's file hashes and files, the global stage-2
weights and their digest, the stage-1 digest, the sampling seed and batch size, and K (the
number of sites that trained). Each site verifies all of it and answers with bits, its
threshold, counts and membership aggregates (:mod:`fedcmr4d.audit.site_answer`).

Every site that contributed an accepted update in either stage (the ``sites`` and
``privacy.sites`` of the stage checkpoints' meta) must answer: a missing site, an error reply
or an implausible answer (counts that differ from what the site declared in training and
evaluation, a threshold outside (0, 2], bits that do not match the cohort) fails the audit,
naming the site. ``audit.json`` (public) and ``audit-full.json`` (with every site's answer) are
written either way.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedcmr4d.config import Config
from fedcmr4d.errors import ConfigError, InputError

log = logging.getLogger("flwr.fedcmr4d")  # propagates to Flower's handler: `flwr log`

#: Above this many bytes the cohort is not sent in the message; sites must read it.
MAX_INLINE_BYTES = 64 * 2**20
_NODE_SUFFIX = re.compile(r" \(node \d+\)$")


def ensure_synthetic(
    out: Path, synthetic_dir: str, n_subjects: int, seed: int, label_segmenter: str = ""
) -> Path:
    """The synthetic cohort to audit: ``synthetic_dir`` if given, else sampled into ``out``.

    A cohort sampled here is labelled with ``label_segmenter`` (a segmenter checkpoint folder)
    when one is given, before the audit hashes its files (labels added later would make the
    release refuse the cohort).
    """
    if synthetic_dir:
        path = Path(synthetic_dir)
        if not (path / "cohort.json").is_file():
            raise InputError(f"{path}: synthetic-dir holds no cohort (cohort.json missing)")
        return path
    path = out / "synthetic"
    if not (path / "cohort.json").is_file():
        checkpoint = out / "diffusion"
        if not (checkpoint / "meta.json").is_file():
            raise ConfigError(
                f"{checkpoint}: stage audit needs a stage-2 checkpoint (run the diffusion stage "
                "first) or synthetic-dir"
            )
        from fedcmr4d.pipelines.generation import sample_cohort

        sample_cohort(checkpoint, n_subjects, path, seed=seed)
        if label_segmenter:
            from fedcmr4d.pipelines.labelling import label_cohort

            label_cohort(path, label_segmenter)
    return path


def site_label(label: str) -> str:
    """``"site-A (node 123)"`` -> ``"site-A"`` (node ids are drawn anew each run)."""
    return _NODE_SUFFIX.sub("", label)


def trained_sites(out: Path) -> dict[str, dict[str, int | None]]:
    """Sites that contributed accepted updates, with what they declared.

    Read from the stage checkpoints' meta (``sites``; ``privacy.sites`` when present), the
    per-site ``examples`` of the diffusion rounds in ``metrics.jsonl`` (training subjects) and
    ``diffusion-evaluation.json`` (holdout subjects).
    """
    from fedcmr4d.io import read_json_object

    sites: dict[str, dict[str, int | None]] = {}
    for stage in ("autoencoder", "diffusion"):
        meta_path = out / stage / "meta.json"
        if not meta_path.is_file():
            continue
        meta = read_json_object(meta_path, "checkpoint meta")
        names = [site_label(str(s)) for s in meta.get("sites", [])]
        privacy = meta.get("privacy")
        if isinstance(privacy, dict) and isinstance(privacy.get("sites"), dict):
            names += [str(s) for s in privacy["sites"]]
        for name in names:
            sites.setdefault(name, {"n_train": None, "n_holdout": None})
    metrics = out / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            row = json.loads(line)
            for label, count in (row.get("examples") or {}).items():
                if row.get("stage") == "diffusion" and site_label(label) in sites:
                    sites[site_label(label)]["n_train"] = int(count)
    evaluation = out / "diffusion-evaluation.json"
    if evaluation.is_file():
        for label, values in read_json_object(evaluation, "evaluation").get("sites", {}).items():
            if site_label(label) in sites and "num-examples" in values:
                sites[site_label(label)]["n_holdout"] = int(values["num-examples"])
    return sites


def build_query(
    out: Path, synthetic_dir: Path, n_sites: int
) -> tuple[Any, dict[str, Any], Any, dict[str, bytes] | None]:
    """(AuditQuery, stage-2 weights, stage-1 digest, file bytes or None) for a cohort."""
    from fedcmr4d.audit.site_answer import AuditQuery
    from fedcmr4d.io import read_json_object, tree_hashes, weights_digest
    from fedcmr4d.train.checkpoint import load_checkpoint

    diffusion = load_checkpoint(out / "diffusion")
    autoencoder = load_checkpoint(out / "autoencoder")
    provenance = read_json_object(synthetic_dir / "cohort.json", "cohort index").get(
        "provenance", {}
    )
    files = tree_hashes(synthetic_dir)
    size = sum((synthetic_dir / rel).stat().st_size for rel in files)
    blobs = None
    if size <= MAX_INLINE_BYTES:
        blobs = {rel: (synthetic_dir / rel).read_bytes() for rel in files}
    query = AuditQuery(
        files=files,
        model_digest=weights_digest({k: v.numpy() for k, v in diffusion.weights.items()}),
        autoencoder_digest=weights_digest({k: v.numpy() for k, v in autoencoder.weights.items()}),
        seed=int(provenance.get("seed", 0)),
        batch_size=int(provenance.get("batch_size", 4)),
        n_sites=n_sites,
        slicewise=provenance.get("sampling") == "slicewise",
        use_ema=provenance.get("weights", "ema") == "ema",
        synthetic_path="" if blobs is not None else str(synthetic_dir.resolve()),
    )
    return query, diffusion.weights, query.autoencoder_digest, blobs


def query_records(
    query: Any, diffusion: dict[str, Any], blobs: dict[str, bytes] | None, config: ConfigRecord
) -> RecordDict:
    """The ``query.audit`` message content: config (+ query JSON), weights, file bytes."""
    from fedcmr4d.federated.records import weights_to_record

    records: dict[str, Any] = {
        "config": ConfigRecord({**dict(config), "stage": "audit", "audit-query": query.to_json()}),
        "diffusion": weights_to_record(diffusion),
    }
    if blobs is not None:
        names = sorted(blobs)
        records["synthetic-files"] = ConfigRecord(
            {"names": names, "blobs": [blobs[n] for n in names]}
        )
    return RecordDict(records)


def check_answer(answer: Any, declared: dict[str, int | None], n_synthetic: int) -> None:
    """Counts against what the site declared in training/evaluation; InputError naming it."""
    from fedcmr4d.audit.membership import check_site_membership

    if len(answer.synthetic_ids) != n_synthetic:
        raise InputError(f"site {answer.site}: answered for {len(answer.synthetic_ids)} subjects")
    for key in ("n_train", "n_holdout"):
        if declared.get(key) is not None and getattr(answer, key) != declared[key]:
            raise InputError(
                f"site {answer.site}: {key}={getattr(answer, key)} in the audit but "
                f"{declared[key]} declared in training/evaluation"
            )
    if answer.membership is not None:
        check_site_membership(answer.site, answer.membership, answer.n_train, answer.n_holdout)


def run_audit_stage(
    grid: Grid,
    *,
    cfg: Config,
    config: ConfigRecord,
    synthetic_dir: Path,
    out: Path,
    timeout: float,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Query every connected site, check who answered and how, write ``out/audit.json``.

    Args:
        config: the message config (config YAML, simulation hints) sent with the query.
        synthetic_dir: the synthetic cohort (its file hashes go into ``audit.json``).

    Returns:
        The public audit dictionary.
    """
    from fedcmr4d.audit.memorization import (
        SiteAnswer,
        combine_answers,
        full_record,
        write_audit,
    )
    trained = trained_sites(out)
    if not trained:
        raise ConfigError(f"{out}: no stage checkpoint names a site that trained; nothing to audit")
    query, diffusion, _, blobs = build_query(out, synthetic_dir, len(trained))
    records = query_records(query, diffusion, blobs, config)
    messages = [
        Message(
            records,
            dst_node_id=node_id,
            message_type=f"{MessageType.QUERY}.audit",
        )
        for node_id in sorted(grid.get_node_ids())
    ]
    n_synthetic = sum(1 for rel in query.files if rel.endswith("/cine.nii.gz"))
    progress(f"audit: {n_synthetic} synthetic subjects sent to {len(messages)} site(s)")
    answers: dict[str, SiteAnswer] = {}
    reasons: list[str] = []
    errors: list[str] = []
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            errors.append(f"node {node}: {reply.error.reason}")
            log.warning("audit: node %s refused or failed: %s", node, reply.error.reason)
            continue
        try:
            payload = json.loads(str(reply.content.config_records["audit"]["result"]))
            answer = SiteAnswer.from_dict(payload["answer"])
            if payload.get("model_digest") != query.model_digest:
                raise InputError(f"site {answer.site}: answered for another model")
            if answer.site in trained:
                check_answer(answer, trained[answer.site], n_synthetic)
        except (InputError, KeyError, ValueError, TypeError) as exc:
            reasons.append(f"implausible answer: {exc}")
            continue
        if answer.site not in trained:
            log.warning("audit: %s answered but did not train; ignored", answer.site)
            continue
        answers[answer.site] = answer
    implausible = {r.split("site ", 1)[1].split(":", 1)[0] for r in reasons if "site " in r}
    missing = sorted(set(trained) - set(answers) - implausible)
    if missing:
        detail = f" (errors: {'; '.join(errors)})" if errors else ""
        reasons.insert(
            0, f"site(s) {', '.join(missing)} trained the model but did not answer{detail}"
        )
    ordered = [answers[s] for s in sorted(answers)]
    audit = (
        combine_answers(ordered, config=cfg.audit, files=query.files)
        if ordered
        else _empty_audit(query.files, cfg)
    )
    if reasons:
        audit["passed"] = False
        audit["reasons"] = reasons + audit["reasons"]
    audit["sites_expected"] = sorted(trained)
    write_audit(audit, out / "audit.json", full=full_record(audit, ordered))
    verdict = "passed" if audit["passed"] else "FAILED: " + "; ".join(audit["reasons"])
    progress(f"audit: {verdict}; {out / 'audit.json'}")
    for warning in audit["warnings"]:
        progress(f"audit warning: {warning}")
    return audit


def _empty_audit(files: dict[str, str], cfg: Config) -> dict[str, Any]:
    """A failed audit when no site gave a usable answer."""
    from fedcmr4d.audit.memorization import METHOD_NAME

    return {
        "passed": False,
        "reasons": [],
        "warnings": [],
        "threshold": None,
        "thresholds": [],
        "n_synthetic": sum(1 for rel in files if rel.endswith("/cine.nii.gz")),
        "n_sites": 0,
        "site_names": [],
        "n_train": 0,
        "n_holdout": 0,
        "flagged": [],
        "dcr_share": 0.0,
        "dcr_expected": 0.0,
        "dcr_p_value": 1.0,
        "membership": None,
        "method": {
            "name": METHOD_NAME,
            "grid": {},
            "dcr_tolerance": cfg.audit.dcr_tolerance,
            "dcr_alpha": cfg.audit.dcr_alpha,
            "distance": "",
            "threshold_rule": "",
            "flag_rule": "",
            "pass_rule": "",
        },
        "files": dict(sorted(files.items())),
    }
