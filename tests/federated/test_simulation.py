"""Real Flower Simulation Engine + real trainer: both stages, bad sites, crash and resume.

Faults come from the test-only apps in ``faults.py`` (wrapping the real ClientApp and
Coordinator), never from the production run config. Each test starts Ray and real ClientApps
(about 40-60 s on 2 cores), hence ``slow``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from faults import SimulatedCrash, faulty_client_app, halting_coordinator

from fedcmr4d.federated.settings import RunSettings
from fedcmr4d.federated.simulation import run_simulated_federation, simulation_backend
from fedcmr4d.federated.state import load_snapshot
from fedcmr4d.train.checkpoint import load_checkpoint

BACKEND = simulation_backend(num_cpus=1, total_cpus=2)


def _settings(tmp_path: Path, cohorts: Path, **kw: object) -> RunSettings:
    kw.setdefault("config", "tiny")
    return RunSettings(
        out_dir=str(tmp_path / "out"),
        cohort_root=str(cohorts),
        state_root=str(tmp_path / "site-state"),
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.slow
def test_two_sites_both_stages_then_audit(tmp_path: Path, two_sites: Path) -> None:
    settings = _settings(
        tmp_path,
        two_sites,
        stages="autoencoder,diffusion,audit",
        rounds_autoencoder=1,
        rounds_diffusion=2,
        synthetic_subjects=2,
    )
    lines: list[str] = []
    state = run_simulated_federation(settings, progress=lines.append, backend_config=BACKEND)

    assert state.completed_stages == ["autoencoder", "diffusion"]
    assert [(r["stage"], r["round"]) for r in state.history] == [
        ("autoencoder", 1),
        ("diffusion", 1),
        ("diffusion", 2),
    ]
    for row in state.history:
        assert row["sites_accepted"] == 2 and row["rejected"] == []
        assert row["train"]["num-examples"] == 4  # 2 sites x 2 training subjects
        assert row["bytes_from_sites"] >= 2 * row["model_bytes"] > 0
    # the first stage-2 round also carries the stage-1 autoencoder to every site; later rounds
    # only its digest, and each site serves them from the copy it kept
    ae_row, dm_row, dm_row2 = state.history
    assert dm_row["bytes_to_sites"] == 2 * (dm_row["model_bytes"] + ae_row["model_bytes"])
    assert dm_row2["bytes_to_sites"] == 2 * dm_row2["model_bytes"]
    kept = sorted(p.parent.name for p in (tmp_path / "site-state").glob("*/stage1-autoencoder*"))
    assert kept == ["site-0-A", "site-1-B"]

    out = Path(settings.out_dir)
    autoencoder = load_checkpoint(out / "autoencoder")
    diffusion = load_checkpoint(out / "diffusion")
    assert autoencoder.stage == "autoencoder" and diffusion.stage == "diffusion"
    assert diffusion.meta["autoencoder"]["path"] == "../autoencoder"
    assert len(diffusion.meta["sites"]) == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    assert (out / "metrics.csv").read_text().count("\n") == 4
    assert (out / "metrics.png").stat().st_size > 1000
    evaluation = json.loads((out / "autoencoder-evaluation.json").read_text())
    assert len(evaluation["sites"]) == 2 and "psnr" in evaluation["mean"]
    assert any("diffusion round 2/2: 2/2 sites accepted" in line for line in lines)

    # Federated audit: sampled from the stage-2 checkpoint, distances from both sites.
    audit_text = (out / "audit.json").read_text()
    audit = json.loads(audit_text)
    assert audit["n_synthetic"] == 2 and isinstance(audit["passed"], bool)
    assert audit["site_names"] == ["site-0-A", "site-1-B"]
    assert audit["n_train"] == 4 and audit["n_holdout"] == 2  # 2 + 1 per site
    assert audit["passed"] is False  # one holdout subject per site: cannot calibrate
    assert any(path.endswith("cine.nii.gz") for path in audit["files"])
    real_ids = [p.name for site in two_sites.iterdir() for p in site.iterdir() if p.is_dir()]
    assert real_ids and not any(real_id in audit_text for real_id in real_ids)


@pytest.mark.slow
def test_an_fsq_stage_one_federates_and_its_checkpoint_names_the_grid_scale(
    tmp_path: Path, two_sites: Path
) -> None:
    from fedcmr4d.models.fsq import fsq_latent_scale
    from fedcmr4d.pipelines.generation import load_generator, sample_latent_stacks

    fsq = "autoencoder.quantizer=fsq;autoencoder.entropy_weight=0;diffusion.decode_latents=clamp"
    settings = _settings(
        tmp_path,
        two_sites,
        overrides=fsq + ";diffusion.prediction=sample",
        stages="autoencoder,diffusion",
        rounds_autoencoder=1,
        rounds_diffusion=1,
    )
    state = run_simulated_federation(settings, progress=lambda _: None, backend_config=BACKEND)
    assert state.completed_stages == ["autoencoder", "diffusion"]
    out = Path(settings.out_dir)
    autoencoder = load_checkpoint(out / "autoencoder")
    assert autoencoder.cfg.autoencoder.quantizer == "fsq"
    assert not any("codebook" in name for name in autoencoder.weights)
    evaluation = json.loads((out / "autoencoder-evaluation.json").read_text())["mean"]
    assert "dead_codes" not in evaluation and evaluation["codes_used"] >= 1
    diffusion = load_checkpoint(out / "diffusion")
    assert diffusion.meta["latent_scale"] == pytest.approx(fsq_latent_scale([5] * 8))
    assert "fsq_levels" in diffusion.meta["latent_scale_source"]
    gen = load_generator(out / "diffusion", "cpu")
    latents = sample_latent_stacks(gen, 1, torch.Generator().manual_seed(0))
    assert latents.shape[2] == 8 and bool(torch.isfinite(latents).all())


@pytest.mark.slow
def test_nan_wrong_shape_huge_norm_and_failing_sites_are_left_out(
    tmp_path: Path, site_maker: Callable[..., Path]
) -> None:
    cohorts = site_maker(tmp_path, "ABCAB", subjects=2)
    settings = _settings(
        tmp_path,
        cohorts,
        stages="autoencoder",
        rounds_autoencoder=1,
        overrides="train.autoencoder.steps=1;federation.min_accepted=1",
        evaluate=False,
    )
    faulty = faulty_client_app({0: "nan", 1: "shape", 2: "norm", 3: "crash"})
    state = run_simulated_federation(settings, backend_config=BACKEND, client_app=faulty)

    (row,) = state.history
    assert row["sites_replied"] == 5 and row["sites_accepted"] == 1
    assert [name.split(" ")[0] for name in row["accepted"]] == ["site-4-B"]
    reasons = {r["site"].split(" ")[0]: r["reason"] for r in row["rejected"]}
    assert "NaN or Inf" in reasons["site-0-A"]
    assert "expected (" in reasons["site-1-B"]  # wrong shape
    assert "global model's norm" in reasons["site-2-C"]  # the absolute bar, any number of sites
    (failed,) = [reason for site, reason in reasons.items() if site.startswith("node")]
    # an error reply, e.g. a site that crashed: a category and an id, never the exception's text
    assert failed.startswith("site error: internal (id ")
    assert "simulated site failure" not in failed and "/secret/path" not in failed
    assert state.completed_stages == ["autoencoder"]  # the round completed with the good site


@pytest.mark.slow
def test_crash_after_round_one_then_resume_runs_the_rest_once(
    tmp_path: Path, two_sites: Path
) -> None:
    """FedAdam under site-level DP-SGD (tiny-dp): strategy moments and each site's privacy
    ledger must both survive the crash, and no round may run twice."""
    common = {
        "config": "tiny-dp",
        "stages": "autoencoder",
        "rounds_autoencoder": 3,
        "overrides": "federation.strategy=fedadam;train.autoencoder.steps=1",
        "evaluate": False,
    }
    crashing = _settings(tmp_path, two_sites, **common)
    with pytest.raises(SimulatedCrash):
        run_simulated_federation(
            crashing, backend_config=BACKEND, coordinator=halting_coordinator(after_rounds=1)
        )
    halted = load_snapshot(Path(crashing.out_dir))
    assert halted is not None and halted.state.round == 1
    assert set(k.split("/")[1] for k in halted.strategy_arrays) == {"m_t", "v_t"}

    resumed = _settings(tmp_path, two_sites, resume=True, **common)
    state = run_simulated_federation(resumed, backend_config=BACKEND)
    assert [r["round"] for r in state.history] == [1, 2, 3]
    assert all(r["sites_accepted"] == 2 and not r["rejected"] for r in state.history)
    lines = (Path(resumed.out_dir) / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2, 3]
    assert load_checkpoint(Path(resumed.out_dir) / "autoencoder").meta["round"] == 3

    # The sites' ledgers live with their cohorts: epsilon keeps growing after the restart.
    epsilons = [r["train"]["epsilon"] for r in state.history]
    assert epsilons[0] < epsilons[1] < epsilons[2]
    # Under DP a site sends no training loss (not covered by epsilon): only epsilon, delta, count.
    assert all(set(r["train"]) <= {"epsilon", "delta", "num-examples"} for r in state.history)
    ledgers = sorted(two_sites.glob("*/.fedcmr4d/privacy-ledger.json"))
    assert [p.parents[1].name for p in ledgers] == ["site-0-A", "site-1-B"]
    # Each site's (epsilon, delta, accountant) per stage goes into the stage checkpoint's meta.
    meta = load_checkpoint(Path(resumed.out_dir) / "autoencoder").meta
    sites = meta["privacy"]["sites"]
    assert sorted(sites) == ["site-0-A", "site-1-B"]
    for site, ledger in zip(sorted(sites), ledgers, strict=True):
        entry = sites[site]["autoencoder"]
        assert entry["accountant"] == "rdp" and entry["delta"] > 0
        assert entry["epsilon"] == pytest.approx(json.loads(ledger.read_text())["epsilon"])


@pytest.mark.slow
def test_corrupt_subject_and_policy_refusal_leak_nothing_to_the_coordinator(
    tmp_path: Path, site_maker: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Site 0 has a truncated training cine, site 1's policy refuses the local steps asked,
    site 2 trains: the round goes on, and no cohort path or subject id reaches the coordinator."""
    from fedcmr4d.config import load_config
    from fedcmr4d.data.cohort import open_cohort
    from fedcmr4d.train.local import split_subjects

    cohorts = site_maker(tmp_path, "ABC", subjects=3)
    cfg = load_config("tiny")
    broken = cohorts / "site-0-A"
    train_ids, _ = split_subjects(list(open_cohort(broken).subject_ids), 0.25, cfg.seed)
    cine = broken / train_ids[0] / "cine.nii.gz"
    cine.write_bytes(cine.read_bytes()[: cine.stat().st_size // 3])
    settings = _settings(
        tmp_path,
        cohorts,
        stages="autoencoder",
        rounds_autoencoder=1,
        overrides="train.autoencoder.steps=2;federation.min_accepted=1",
    )
    lines: list[str] = []
    with caplog.at_level("INFO", logger="flwr"):
        state = run_simulated_federation(
            settings,
            progress=lines.append,
            backend_config=BACKEND,
            node_configs={1: {"max-local-steps": 1}},
        )

    (row,) = state.history
    assert [name.split(" ")[0] for name in row["accepted"]] == ["site-2-C"]
    reasons = sorted(r["reason"] for r in row["rejected"])
    assert reasons[0].startswith("site error: input (id ")  # the truncated NIfTI
    assert reasons[1] == "site policy: max-local-steps: asked 2, limit 1"
    assert row["refused"] == 1

    # (the simulation's own run config names cohort-root: the coordinator chose it; a site's
    # cohort folder, its files and its subject ids are the site's)
    secrets = [str(site) for site in cohorts.iterdir()] + [str(cine)]
    secrets += [p.name for site in cohorts.iterdir() for p in site.iterdir() if p.is_dir()]
    secrets = [s for s in secrets if not s.startswith(".")]
    assert "s0-000" in secrets
    out = Path(settings.out_dir)
    texts = {
        str(p): p.read_bytes().decode("utf-8", "replace") for p in out.rglob("*") if p.is_file()
    }
    texts["progress"] = "\n".join(lines)
    texts["coordinator log"] = "\n".join(
        r.getMessage() for r in caplog.records if r.name.startswith("flwr")
    )
    leaks = [(where, s) for where, text in texts.items() for s in secrets if s in text]
    assert len(texts) > 5 and leaks == []
