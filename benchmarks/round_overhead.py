"""Federated round overhead: one Flower round versus the same local training without Flower.

For each stage, the same site trains the same number of steps twice, with one thread each:

- **local**: ``fedcmr4d.federated.site.train_round`` called in this process (the exact code the
  ClientApp runs: open the cohort, build the trainer, load the global weights, train, export);
- **federated**: three rounds per stage of a real Simulation-Engine run with one site (ServerApp
  + ClientApp in Ray, weights packed into Flower messages, update screening, aggregation,
  checkpointing), as the coordinator logs them in ``metrics.jsonl`` (``seconds``: send to
  aggregated).

Overhead = mean of rounds 2-3 - mean of two local runs, and their ratio (the steady state: the
local runs also follow a warm-up); ``spread_s`` gives each side's range, i.e. the noise the
overhead must be read against. Round 1 is reported apart: it includes the ClientApp's start in
its Ray actor (imports, first model build), paid once per run and stage. Ray's own start-up is
the simulation's total minus its rounds.

    python -m benchmarks.round_overhead [--quick] [--no-record] [--config cpu-small] [--steps 100]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import benchmark_parser, context, emit, peak_rss_gib, record
from fedcmr4d.config import load_config
from fedcmr4d.data.phantom import write_phantom_cohort
from fedcmr4d.federated.init_weights import initial_weights
from fedcmr4d.federated.settings import RunSettings, SiteSettings
from fedcmr4d.federated.simulation import run_simulated_federation, simulation_backend
from fedcmr4d.federated.site import train_round
from fedcmr4d.stages import GENERATOR_STAGES

STAGES = GENERATOR_STAGES
REPEATS = 2  # timed local runs, and federated rounds after the first, per stage


def overrides_for(steps: int) -> list[str]:
    """Config overrides: ``steps`` local steps per round in both stages (``Config.round_steps``,
    which both the local call and the ClientApp use); one site, so its reply is the quorum."""
    steps_keys = [f"federation.local_steps_{stage}={steps}" for stage in STAGES]
    return [*steps_keys, "federation.min_nodes=1", "federation.min_accepted=1"]


def local_seconds(
    config: str, overrides: list[str], cohort: Path, state: Path
) -> dict[str, list[float]]:
    """``REPEATS`` timings of ``train_round`` per stage, in this process, after a warm-up."""
    cfg = load_config(config, overrides)
    site = SiteSettings(name=cohort.name, cohort=cohort, state_dir=state)
    autoencoder = initial_weights("autoencoder", cfg)  # stage 2's cost does not depend on it
    out: dict[str, list[float]] = {}
    for stage in STAGES:
        weights = initial_weights(stage, cfg)
        ae = autoencoder if stage == "diffusion" else None
        rounds = {name: 1 for name in STAGES}
        warm = load_config(config, [*overrides, f"federation.local_steps_{stage}=1"])
        train_round(stage, warm, site, weights, ae, rounds=rounds, server_round=1)
        times = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            train_round(stage, cfg, site, weights, ae, rounds=rounds, server_round=1)
            times.append(time.perf_counter() - start)
        out[stage] = times
    return out


def federated_seconds(
    config: str, overrides: list[str], root: Path
) -> tuple[dict[tuple[str, int], float], float, dict[str, int]]:
    """Seconds per (stage, round) from the coordinator's log, total run seconds, and the bytes
    each stage's last round moved (both ways)."""
    settings = RunSettings(
        config=config, overrides=";".join(overrides), rounds_autoencoder=1 + REPEATS,
        rounds_diffusion=1 + REPEATS,
        evaluate=False, out_dir=str(root / "out"),
        cohort_root=str(root / "sites"), state_root=str(root / "state"),
    )  # fmt: skip
    start = time.perf_counter()
    run_simulated_federation(settings, backend_config=simulation_backend(1, 2))
    total = time.perf_counter() - start
    rows = [json.loads(x) for x in (root / "out" / "metrics.jsonl").read_text().splitlines()]
    seconds = {(row["stage"], int(row["round"])): float(row["seconds"]) for row in rows}
    moved = {
        row["stage"]: int(row["bytes_to_sites"]) + int(row["bytes_from_sites"]) for row in rows
    }
    return seconds, total, moved


def _span(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def measure(config: str, steps: int, subjects: int) -> dict[str, Any]:
    """Both timings for one config; returns one row per stage plus the run totals."""
    cfg = load_config(config)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cohort = root / "sites" / "site-A"
        write_phantom_cohort(
            cohort, subjects, 7, image_size=cfg.data.image_size, frames=cfg.data.frames,
            slices=max(cfg.data.slices, 6),
        )  # fmt: skip
        overrides = overrides_for(steps)
        local = local_seconds(config, overrides, cohort, root / "local-state")
        federated, total, moved = federated_seconds(config, overrides, root)
    rows = []
    for stage in STAGES:
        steady = [federated[(stage, r)] for r in range(2, 2 + REPEATS)]
        fed, loc = float(np.mean(steady)), float(np.mean(local[stage]))
        rows.append(
            {
                "stage": f"{config} {stage}",
                "steps_per_round": steps,
                "local_s": round(loc, 2),
                "first_round_s": round(federated[(stage, 1)], 2),
                "federated_round_s": round(fed, 2),
                "spread_s": f"local {_span(local[stage])}; rounds {_span(steady)}",
                "overhead_s": round(fed - loc, 2),
                "ratio": round(fed / loc, 3),
                "bytes_per_round": moved[stage],
            }
        )
    startup = total - sum(federated.values())
    return {
        "rows": rows,
        "simulation_total_s": round(total, 1),
        "ray_and_setup_s": round(startup, 1),
    }


def main() -> None:
    parser = benchmark_parser(__doc__, "tiny config, 2 steps per round")
    parser.add_argument("--config", default="cpu-small")
    parser.add_argument("--steps", type=int, default=100, help="local steps per round")
    parser.add_argument("--subjects", type=int, default=8, help="phantom subjects at the site")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the simulated ClientApp gets one CPU (simulation_backend(1, 2))
    config, steps = ("tiny", 2) if args.quick else (args.config, args.steps)
    measured = measure(config, steps, 4 if args.quick else args.subjects)
    ctx = context()
    rows = [{**row, **ctx} for row in measured.pop("rows")]
    result: dict[str, Any] = {"benchmark": "round_overhead", "rows": rows, **measured}
    result["peak_rss_gib"] = round(peak_rss_gib(), 2)
    emit(result)
    if args.quick or args.no_record:
        return
    columns = [
        "stage", "steps_per_round", "local_s", "first_round_s", "federated_round_s",
        "overhead_s", "ratio", "spread_s", "bytes_per_round", "machine", "torch", "date",
    ]  # fmt: skip
    command = f"python -m benchmarks.round_overhead --config {config} --steps {steps}"
    for row in rows:
        record("round_overhead", row["stage"], columns, row, command)


if __name__ == "__main__":
    main()
