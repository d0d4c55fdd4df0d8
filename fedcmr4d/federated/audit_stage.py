"""The federated memorization audit (run-config stage ``audit``), coordinator side.

The coordinator samples a synthetic cohort from the stage-2 checkpoint (or takes
``synthetic-dir``), prepares its audit representations once (synthetic data only) and sends them
to every site in a ``query.audit`` message. Each site answers with nearest-neighbour distances
of the synthetic subjects to its own training and holdout subjects, and holdout-to-train
distances for the threshold (``fedcmr4d.audit.memorization.SiteAuditResult``): no real image and no
real subject id leaves a site. The combiner writes ``audit.json`` and ``audit.html``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedcmr4d.config import Config
from fedcmr4d.errors import ConfigError, InputError

log = logging.getLogger("flwr.fedcmr4d")  # propagates to Flower's handler: `flwr log`


def ensure_synthetic(out: Path, synthetic_dir: str, n_subjects: int, seed: int) -> Path:
    """The synthetic cohort to audit: ``synthetic_dir`` if given, else sampled into ``out``."""
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
    return path


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
    """Ask every connected site for its audit distances, combine, write ``out/audit.json``.

    Args:
        config: the message config (config YAML, simulation hints) sent with the query.
        synthetic_dir: the synthetic cohort (its file hashes go into ``audit.json``).

    Returns:
        The audit dictionary (``passed``, ``threshold``, ``flagged``, ``dcr_share``, ...).
    """
    from fedcmr4d.audit.memorization import (
        SiteAuditResult,
        combine_site_results,
        prepare_synthetic,
        write_audit,
    )

    synthetic = prepare_synthetic(synthetic_dir, cfg.audit)
    query = ConfigRecord(
        {
            **dict(config),
            "stage": "audit",
            "synthetic-ids": list(synthetic.ids),
            "grid": json.dumps(synthetic.grid.as_dict()),
        }
    )
    reps = ArrayRecord({"reps": Array(synthetic.reps.numpy())})
    messages = [
        Message(
            RecordDict({"config": query, "synthetic": reps}),
            dst_node_id=node_id,
            message_type=f"{MessageType.QUERY}.audit",
        )
        for node_id in sorted(grid.get_node_ids())
    ]
    progress(f"audit: {len(synthetic.ids)} synthetic subjects sent to {len(messages)} site(s)")
    results = []
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            raise InputError(f"audit: site node {node} failed: {reply.error.reason}")
        payload = json.loads(str(reply.content.config_records["audit"]["result"]))
        results.append(SiteAuditResult.from_dict(payload))
    if len(results) != len(messages):
        raise InputError(f"audit: {len(results)} of {len(messages)} sites answered")
    audit = combine_site_results(results, config=cfg.audit, files=synthetic.files)
    write_audit(audit, out / "audit.json")
    verdict = "passed" if audit["passed"] else "FAILED: " + "; ".join(audit["reasons"])
    progress(
        f"audit: {verdict} (threshold {audit['threshold']:.4f}, dcr_share "
        f"{audit['dcr_share']:.2f}, p {audit['dcr_p_value']:.2g}, {len(audit['flagged'])} "
        f"flagged); {out / 'audit.json'}"
    )
    for warning in audit["warnings"]:
        progress(f"audit warning: {warning}")
    return audit
