"""Train step time and peak memory per stage: plain fp32 eager vs tuned (issue 9, row 1).

One optimizer step is exactly what a site runs: :meth:`StageTrainer.train_step` (data loading,
forward, loss, backward, gradient clipping, AdamW step; stage 1 with the adversarial loss and the
discriminator's own step switched on, stage 2 with the EMA update), on a phantom cohort in the
config's geometry. Stage 2's frozen autoencoder keeps its random initial weights: the step's cost
does not depend on them.

Variants (all in ONE run of this script, one child process each so that every variant's peak
memory is its own):

- ``plain``: fp32, eager, contiguous tensors;
- ``channels_last``: ``channels_last_3d`` models and inputs;
- ``bf16``: ``torch.autocast(dtype=bfloat16)`` around the losses;
- ``compile``: ``torch.compile`` of every model (the first steps, which compile, are not timed);
- ``cl_bf16``: channels-last and bf16, eager;
- ``tuned``: all three together (the GPU default; on a CPU compiling twice per stage costs
  minutes, so the CPU default times ``compile`` alone and the eager combinations).

The JSON line gives, per stage, each variant's median step time, peak memory (GPU: CUDA peak
allocated; CPU: the child's peak RSS) and ``speedup`` = plain / variant; ``best`` names the
fastest variant. A variant that fails (e.g. out of GPU memory) is reported with its error.

    python -m benchmarks.train_step                   # cpu-small (CPU) or paper (GPU); records
    python -m benchmarks.train_step --quick           # tiny config, eager variants, no record
    python -m benchmarks.train_step --config paper --set train.autoencoder.batch_size=2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import benchmark_parser, context, emit, peak_rss_gib, record
from fedcmr4d.config import Config, load_config
from fedcmr4d.data.phantom import write_phantom_cohort
from fedcmr4d.stages import GENERATOR_STAGES, Stage
from fedcmr4d.stages.base import Runtime
from fedcmr4d.train.models import build_autoencoder
from fedcmr4d.train.trainer import StageTrainer, resolve_device

STAGES = GENERATOR_STAGES
VARIANTS = {
    "plain": (False, False, False),
    "channels_last": (True, False, False),
    "bf16": (False, True, False),
    "cl_bf16": (True, True, False),
    "compile": (False, False, True),
    "tuned": (True, True, True),
}
#: Defaults: on a CPU, compiling costs minutes per model, so only one compiled variant is timed
#: there (``tuned`` = all three switches is timed on CUDA).
GPU_VARIANTS = ("plain", "channels_last", "bf16", "compile", "tuned")
CPU_VARIANTS = ("plain", "channels_last", "bf16", "cl_bf16", "compile")
QUICK_VARIANTS = ("plain", "bf16")


def variant_trainer(
    stage: Stage,
    cfg: Config,
    cohort: Path,
    *,
    autoencoder_weights: dict[str, torch.Tensor] | None,
    channels_last: bool,
    bf16: bool,
    compile_models: bool,
) -> StageTrainer:
    """The site's trainer with the CPU/GPU tuning switches set explicitly.

    :class:`StageTrainer` enables channels-last and bf16 only on CUDA (following the config);
    here each switch is forced on or off (an explicit :class:`Runtime`) so that the same step is
    timed both ways on any device.
    """
    runtime = Runtime(resolve_device(cfg.train.device), channels_last=channels_last, bf16=bf16)
    trainer = StageTrainer(
        stage, cfg, cohort, autoencoder_weights=autoencoder_weights, runtime=runtime
    )
    if compile_models:
        for name, model in list(trainer.models.items()):
            trainer.models[name] = torch.compile(model)  # type: ignore[assignment]
    return trainer


def bench_config(name: str, overrides: list[str]) -> Config:
    """The config, with the adversarial loss on from step 0 (stage 1 is timed with G + D)."""
    return load_config(name, ["autoencoder.adversarial_start_step=0", *overrides])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_variant(
    stage: str, variant: str, cfg: Config, cohort: Path, *, steps: int, warmup: int
) -> dict[str, Any]:
    """Time ``steps`` train steps after ``warmup`` untimed ones (which include compilation)."""
    channels_last, bf16, compile_models = VARIANTS[variant]
    ae_weights = None
    if stage == "diffusion":
        torch.manual_seed(cfg.seed)
        ae_weights = {f"autoencoder.{k}": v for k, v in build_autoencoder(cfg).state_dict().items()}
    trainer = variant_trainer(
        Stage.parse(stage),
        cfg,
        cohort,
        autoencoder_weights=ae_weights,
        channels_last=channels_last,
        bf16=bf16,
        compile_models=compile_models,
    )
    device = trainer.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        trainer.train_step()
    _sync(device)
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.train_step()
        _sync(device)
        times.append(time.perf_counter() - start)
    params = sum(p.numel() for m in trainer.models.values() for p in _params(m))
    memory = (
        torch.cuda.max_memory_allocated(device) / 1024**3
        if device.type == "cuda"
        else peak_rss_gib()
    )
    return {
        "step_s": round(statistics.median(times), 4),
        "step_s_min": round(min(times), 4),
        "warmup_s": round(warmup_s, 2),
        "peak_gib": round(memory, 3),
        "memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_peak_rss",
        "batch": trainer.train_cfg.batch_size * trainer.train_cfg.slices_per_subject,
        "params_m": round(params / 1e6, 2),
        "device": device.type,
    }


def _params(model: nn.Module) -> list[nn.Parameter]:
    return list(model.parameters())


def _worker(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    cfg = bench_config(args.config, args.set)
    try:
        result = run_variant(
            args.stage, args.variant, cfg, args.cohort, steps=args.steps, warmup=args.warmup
        )
    except (RuntimeError, torch.OutOfMemoryError) as exc:  # e.g. CUDA OOM, compile failure
        result = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    print(json.dumps(result))


def _in_process(args: argparse.Namespace, stage: str, variant: str, cohort: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    cfg = bench_config(args.config, args.set)
    return run_variant(stage, variant, cfg, cohort, steps=args.steps, warmup=args.warmup)


def _spawn(args: argparse.Namespace, stage: str, variant: str, cohort: Path) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "benchmarks.train_step", "--worker",
        "--stage", stage, "--variant", variant, "--config", args.config,
        "--cohort", str(cohort), "--steps", str(args.steps), "--warmup", str(args.warmup),
    ]  # fmt: skip
    for item in args.set:
        cmd += ["--set", item]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"worker exit {proc.returncode}: {tail[:200]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _summarise(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    plain = results.get("plain", {}).get("step_s")
    timed = {v: r["step_s"] for v, r in results.items() if "step_s" in r}
    for r in results.values():
        if plain and "step_s" in r:
            r["speedup"] = round(plain / r["step_s"], 2)
    best = min(timed, key=lambda v: timed[v]) if timed else None
    return {
        "variants": results,
        "best": best,
        "best_speedup": results[best].get("speedup") if best else None,
        "tuned_speedup": results.get("tuned", {}).get("speedup"),
        "compile_warmup_s": results.get("compile", {}).get("warmup_s"),
    }


def main() -> None:
    parser = benchmark_parser(__doc__, "tiny config, eager only, no record")
    parser.add_argument("--config", default=None, help="default: paper on CUDA, else cpu-small")
    parser.add_argument("--set", action="append", default=[], help="config override k=v")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (compile)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--cohort", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.config is None:
        args.config = (
            "tiny" if args.quick else ("paper" if torch.cuda.is_available() else "cpu-small")
        )
    args.steps = args.steps or (3 if args.quick else 20)
    args.warmup = args.warmup or (1 if args.quick else 3)
    if args.worker:
        _worker(args)
        return
    default = CPU_VARIANTS if not torch.cuda.is_available() else GPU_VARIANTS
    variants = args.variants or list(QUICK_VARIANTS if args.quick else default)
    cfg = bench_config(args.config, args.set)
    batch = max(cfg.train.autoencoder.batch_size, cfg.train.diffusion.batch_size)
    stages: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cohort = Path(tmp) / "phantom"
        write_phantom_cohort(
            cohort,
            batch,
            seed=5,
            image_size=cfg.data.image_size,
            slices=cfg.data.slices,
            frames=cfg.data.frames,
        )
        for stage in args.stages:
            # --quick runs the variants in this process (seconds, not a child per variant);
            # its peak memory is then the whole run's, so it is only a shape check.
            run = _in_process if args.quick else _spawn
            results = {v: run(args, stage, v, cohort) for v in variants}
            stages[stage] = _summarise(results)
    result = {
        "benchmark": "train_step",
        "config": args.config,
        "overrides": args.set,
        "steps": args.steps,
        "warmup": args.warmup,
        "stages": stages,
        "torch_threads": torch.get_num_threads(),
        **context(),
    }
    emit(result)
    if args.quick or args.no_record:
        return
    command = "python -m benchmarks.train_step" + "".join(
        f" --{k} {v}" for k, v in (("config", args.config),) if v != "cpu-small"
    )
    command += "".join(f" --set {s}" for s in args.set)
    _record(result, command)


def _cell(variant: dict[str, Any] | None) -> Any:
    """A variant's step time, "failed" (its error is in the JSON line) or "not run"."""
    if variant is None:
        return "not run"
    if "error" in variant:
        return "out of memory" if "memory" in variant["error"].lower() else "failed"
    return variant["step_s"]


def _record(result: dict[str, Any], command: str) -> None:
    columns = [
        "stage / config (machine)", "batch", "plain_s", "channels_last_s", "bf16_s",
        "cl_bf16_s", "compile_s", "tuned_s", "best", "best_speedup", "plain_peak_gib",
        "best_peak_gib", "compile_warmup_s", "torch", "date",
    ]  # fmt: skip
    for stage, summary in result["stages"].items():
        v = summary["variants"]
        plain = v.get("plain", {})
        row = {
            "batch": plain.get("batch", ""),
            **{f"{name}_s": _cell(v.get(name)) for name in VARIANTS},
            "best": summary["best"],
            "best_speedup": summary["best_speedup"],
            "plain_peak_gib": plain.get("peak_gib", ""),
            "best_peak_gib": v.get(summary["best"] or "", {}).get("peak_gib", "n/a"),
            "compile_warmup_s": summary["compile_warmup_s"] or "n/a",
            **{k: result[k] for k in ("torch", "date")},
        }
        key = f"{stage} / {result['config']} ({result['machine']})"
        record("train_step", key, columns, row, command)


if __name__ == "__main__":
    main()
