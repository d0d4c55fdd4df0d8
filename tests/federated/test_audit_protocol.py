"""The federated audit over real Flower messages: a site answers only with bits it can check,
every site that trained must answer, a lying site and a hostile coordinator are caught.

One federation is trained (both stages, 2 sites x 8 phantom subjects), then the audit stage
runs again under different conditions. Each simulation starts Ray, hence ``slow``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, Message, MessageType
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from fedcmr4d.federated import client_app as real_site
from fedcmr4d.federated.audit_stage import build_query, query_records
from fedcmr4d.federated.messages import message_config
from fedcmr4d.federated.server_app import make_server_app
from fedcmr4d.federated.settings import RunSettings
from fedcmr4d.federated.simulation import run_simulated_federation, simulation_backend
from fedcmr4d.io import sha256_file

BACKEND = simulation_backend(num_cpus=1, total_cpus=2)

liar = ClientApp()


@liar.query("audit")
def _lying_audit(msg: Message, context: Context) -> Message:
    """The real site's answer, with site 1 claiming 5 training subjects more than it has."""
    reply = real_site.audit(msg, context)
    if int(context.node_config["partition-id"]) == 1:
        record = reply.content.config_records["audit"]
        result = json.loads(str(record["result"]))
        result["answer"]["n_train"] += 5
        record["result"] = json.dumps(result)
    return reply


def _probe_app(settings: RunSettings, real_cine: Path, replies: list[Message]) -> ServerApp:
    """A hostile coordinator: a 'synthetic' cohort with a real training patient's scan, then
    honest queries until the sites stop answering."""
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        out = Path(settings.out_dir)
        cfg = settings.load()
        config = message_config(settings, "audit", cfg, cfg.to_yaml())
        query, diffusion, _, blobs = build_query(out, out / "synthetic", 2)
        assert blobs is not None
        probe = dict(blobs)
        probe["synth0001/cine.nii.gz"] = real_cine.read_bytes()
        files = dict(query.files)
        files["synth0001/cine.nii.gz"] = sha256_file(real_cine)
        hostile = dataclasses.replace(query, files=files)
        for q, b in [(hostile, probe), (query, blobs), (query, blobs)]:
            messages = [
                Message(
                    query_records(q, diffusion, b, config),
                    dst_node_id=node,
                    message_type=f"{MessageType.QUERY}.audit",
                )
                for node in sorted(grid.get_node_ids())
            ]
            replies.extend(grid.send_and_receive(messages, timeout=600))

    return app


def _audit(out: Path) -> dict[str, Any]:
    return json.loads((out / "audit.json").read_text())


@pytest.mark.slow
def test_audit_protocol_over_flower(tmp_path: Path, site_maker: Any) -> None:
    cohorts = site_maker(tmp_path, "AB", subjects=8)  # 6 train / 2 holdout per site
    settings = RunSettings(
        config="tiny",
        out_dir=str(tmp_path / "out"),
        cohort_root=str(cohorts),
        state_root=str(tmp_path / "site-state"),
        stages="autoencoder,diffusion,audit",
        rounds_autoencoder=1,
        rounds_diffusion=1,
        synthetic_subjects=2,
    )
    run_simulated_federation(settings, backend_config=BACKEND)
    out = Path(settings.out_dir)
    audit = _audit(out)
    assert audit["site_names"] == ["site-0-A", "site-1-B"] == audit["sites_expected"]
    assert audit["n_train"] == 12 and audit["n_holdout"] == 4 and audit["n_synthetic"] == 2
    assert set(audit["membership"]) >= {"auc", "tpr_at_1pct_fpr", "n_members", "n_nonmembers"}
    assert audit["membership"]["n_members"] == 12
    text = (out / "audit.json").read_text() + (out / "audit-full.json").read_text()
    real_ids = [p.name for site in cohorts.iterdir() for p in site.iterdir() if p.is_dir()]
    assert not [i for i in real_ids if i in text]
    answers = json.loads((out / "audit-full.json").read_text())["site_answers"]
    assert {a["site"] for a in answers} == {"site-0-A", "site-1-B"}
    assert all(set(a) == set(answers[0]) and len(a["copy_flags"]) == 2 for a in answers)
    counters = sorted((tmp_path / "site-state").glob("*/audit-queries.json"))
    assert [list(json.loads(c.read_text()).values()) for c in counters] == [[1], [1]]

    again = dataclasses.replace(settings, resume=True)
    # A lying site (counts unlike those it declared in training) fails the audit, named.
    run_simulation(
        server_app=make_server_app(again),
        client_app=liar,
        num_supernodes=2,
        backend_config=BACKEND,  # type: ignore[arg-type]
    )
    audit = _audit(out)
    assert audit["passed"] is False
    assert any("site site-1-B: n_train=11" in r and "6 declared" in r for r in audit["reasons"])

    # A site that trained but is not connected fails the audit, named.
    run_simulated_federation(again, num_sites=1, backend_config=BACKEND)
    audit = _audit(out)
    assert audit["passed"] is False
    assert "site(s) site-1-B trained the model but did not answer" in audit["reasons"][0]

    # A hostile coordinator probing with a real training patient's scan is refused, and after
    # max-audits (3) queries for this model a site answers no more.
    real = cohorts / "site-1-B" / "s1-000" / "cine.nii.gz"
    replies: list[Message] = []
    run_simulation(
        server_app=_probe_app(settings, real, replies),
        client_app=real_site.app,
        num_supernodes=2,
        backend_config=BACKEND,  # type: ignore[arg-type]
    )
    errors = [r.error.reason for r in replies if r.has_error()]
    assert len(replies) == 6 and len(errors) == 6, errors  # nothing answered
    # site 0 had answered 3 queries (first audit, liar run, one-site run): refused 3 times;
    # site 1 counts the probe as its 3rd, refuses it after re-sampling, then its limit holds
    assert sum("site policy: max-audits" in e for e in errors) == 5, errors
    assert sum("synth0001 is not what model" in e for e in errors) == 1, errors
