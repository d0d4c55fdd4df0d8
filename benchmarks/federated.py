"""Bytes per federated round versus model size, and the cost of packing a model into a message.

For each packaged config the stage-1 (VQ-VAE + discriminator) and stage-2 (UNet) parameter
counts give the bytes one round moves: every sampled site receives the global model and sends
its update back; in its first stage-2 round a site also receives the frozen stage-1 model (with
which it encodes its own data), later rounds name it by digest only
(``fedcmr4d.federated.stage1_delivery``). Packing (numpy -> Flower ``Array``) and unpacking are
timed on the real records.
Without ``--quick`` a real 2-site simulation (``tiny``, one stage-1 round, two stage-2 rounds)
checks that the bytes the coordinator logs in ``metrics.jsonl`` equal the computed ones.

    python -m benchmarks.federated [--quick] [--no-record] [--sites 3]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import benchmark_parser, context, emit, peak_rss_gib, record
from fedcmr4d.config import load_config
from fedcmr4d.federated.init_weights import initial_weights
from fedcmr4d.federated.records import (
    parameter_count,
    record_nbytes,
    record_to_weights,
    weights_to_record,
)

CONFIGS = ("tiny", "cpu-small", "paper")


def stage_sizes(config: str) -> dict[str, Any]:
    """Parameters and payload bytes of both stages, and pack/unpack seconds."""
    cfg = load_config(config)
    out: dict[str, Any] = {"config": config}
    for stage, short in (("autoencoder", "s1"), ("diffusion", "s2")):
        weights = initial_weights(stage, cfg)
        start = time.perf_counter()
        rec = weights_to_record(weights)
        packed = time.perf_counter()
        record_to_weights(rec)
        unpacked = time.perf_counter()
        out[f"{short}_params"] = parameter_count(rec)
        out[f"{short}_bytes"] = record_nbytes(rec)
        out[f"{short}_pack_s"] = round(packed - start, 3)
        out[f"{short}_unpack_s"] = round(unpacked - packed, 3)
    return out


def round_bytes(sizes: dict[str, Any], sites: int) -> dict[str, int]:
    """Bytes one round moves each way with ``sites`` sites."""
    s1, s2 = sizes["s1_bytes"], sizes["s2_bytes"]
    return {
        "s1_round_to_sites": sites * s1,
        "s1_round_from_sites": sites * s1,
        "s2_round_to_sites": sites * (s2 + s1),  # a site's first stage-2 round
        "s2_later_round_to_sites": sites * s2,
        "s2_round_from_sites": sites * s2,
    }


def measured_simulation() -> dict[str, Any]:
    """Bytes logged by a real 2-site simulation (tiny, one round per stage)."""
    from fedcmr4d.data.phantom import write_phantom_cohort
    from fedcmr4d.federated.settings import RunSettings
    from fedcmr4d.federated.simulation import run_simulated_federation, simulation_backend

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i, vendor in enumerate("AB"):
            write_phantom_cohort(
                root / "sites" / f"site-{vendor}", 3, 50 + i, image_size=32, frames=16,
                vendor=vendor,
            )  # fmt: skip
        settings = RunSettings(
            config="tiny", rounds_autoencoder=1, rounds_diffusion=2, evaluate=False,
            out_dir=str(root / "out"), cohort_root=str(root / "sites"),
            state_root=str(root / "state"),
        )  # fmt: skip
        start = time.perf_counter()
        run_simulated_federation(settings, backend_config=simulation_backend(1, 2))
        seconds = time.perf_counter() - start
        rows = [json.loads(x) for x in (root / "out" / "metrics.jsonl").read_text().splitlines()]
    return {
        "sim_seconds": round(seconds, 1),
        "sim_rows": [
            {k: r[k] for k in ("stage", "bytes_to_sites", "bytes_from_sites", "seconds")}
            for r in rows
        ],
    }


def main() -> None:
    parser = benchmark_parser(__doc__, "tiny only, no simulation")
    parser.add_argument("--sites", type=int, default=3)
    args = parser.parse_args()
    configs = ("tiny",) if args.quick else CONFIGS
    results = []
    for config in configs:
        sizes = stage_sizes(config)
        results.append({**sizes, **round_bytes(sizes, args.sites), "sites": args.sites})
    result: dict[str, Any] = {"benchmark": "federated", "configs": results, **context()}
    if not args.quick:
        result.update(measured_simulation())
        tiny = round_bytes(results[0], 2)
        logged = result["sim_rows"]
        result["sim_bytes_match"] = [row["bytes_to_sites"] for row in logged] == [
            tiny["s1_round_to_sites"],
            tiny["s2_round_to_sites"],
            tiny["s2_later_round_to_sites"],
        ]
    result["peak_rss_gib"] = round(peak_rss_gib(), 2)
    emit(result)
    if args.quick or args.no_record:
        return
    columns = [
        "config", "sites", "s1_params", "s1_bytes", "s2_params", "s2_bytes",
        "s1_round_to_sites", "s2_round_to_sites", "s2_later_round_to_sites",
        "s2_round_from_sites", "s2_pack_s", "s2_unpack_s", "machine", "date",
    ]  # fmt: skip
    command = f"python -m benchmarks.federated --sites {args.sites}"
    for row in results:
        record("federated", row["config"], columns, {**row, **context()}, command)


if __name__ == "__main__":
    main()
