"""DP step time / non-DP step time for each stage (issue 6, Must show).

Both modes run the real :class:`~fedcmr4d.train.trainer.StageTrainer` step on a phantom cohort of
``3 x batch`` training subjects (q = 1/3 under DP). Non-DP: a shuffled batch of ``batch``
subjects, one backward, global-norm clip. DP: Poisson batches (expected size ``batch``),
per-subject gradients by ``torch.func.vmap``, Opacus clipping and noise; stage 1 takes a
generator AND a discriminator step in both modes (the adversarial loss is on from step 0), each
on its own Poisson sample under DP. The first step of each mode is a warm-up and not timed.

    python -m benchmarks.dp_step                 # cpu-small models; records rows in docs
    python -m benchmarks.dp_step --quick         # tiny models, 2 steps, records nothing
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import benchmark_parser, context, emit, peak_rss_gib, record
from fedcmr4d.config import Config, load_config
from fedcmr4d.data.phantom import write_phantom_cohort
from fedcmr4d.privacy.site import SitePrivacy
from fedcmr4d.stages import GENERATOR_STAGES, Stage
from fedcmr4d.train.trainer import StageTrainer


def _seconds_per_step(trainer: StageTrainer, steps: int) -> tuple[float, float]:
    trainer.train_step()  # warm-up: first vmap/allocations
    times, sizes = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - t0)
        engine = trainer.engine
        sizes.append(engine.last_batch_size if engine else trainer.train_cfg.batch_size)
    return statistics.mean(times), statistics.mean(sizes)


def _trainer(
    stage: Stage, cfg: Config, cohort: Path, ae_weights: dict | None, dp: bool
) -> StageTrainer:
    n_subjects = sum(1 for p in cohort.iterdir() if p.is_dir())
    privacy = SitePrivacy.open(cfg, n_subjects, seed=0) if dp else None
    return StageTrainer(
        stage,
        cfg,
        cohort,
        autoencoder_weights=ae_weights,
        privacy=privacy,
    )


def main() -> None:
    parser = benchmark_parser(__doc__, "tiny models, 2 steps, no record")
    parser.add_argument("--config", default="cpu-small")
    parser.add_argument("--batch", type=int, default=8, help="(expected) subjects per step")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode")
    args = parser.parse_args()
    name, steps, batch = ("tiny", 2, 2) if args.quick else (args.config, args.steps, args.batch)
    overrides = [
        f"train.autoencoder.batch_size={batch}",
        f"train.diffusion.batch_size={batch}",
        "autoencoder.adversarial_start_step=0",
        "train.device=cpu" if not torch.cuda.is_available() else "train.device=cuda",
    ]
    cfg_plain = load_config(name, overrides + ["privacy.enabled=false"])
    cfg_dp = load_config(
        name,
        overrides
        + ["privacy.enabled=true", "privacy.noise_multiplier=1.0", "privacy.target_epsilon=1e6"],
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cohort = Path(tmp) / "cohort"
        d = cfg_plain.data
        write_phantom_cohort(
            cohort, 3 * batch, seed=0, image_size=d.image_size, slices=d.slices, frames=d.frames
        )
        ae_weights = StageTrainer("autoencoder", cfg_plain, cohort).get_weights()
        for stage in GENERATOR_STAGES:
            weights = ae_weights if stage is Stage.DIFFUSION else None
            plain, _ = _seconds_per_step(_trainer(stage, cfg_plain, cohort, weights, False), steps)
            dp_s, mean_b = _seconds_per_step(_trainer(stage, cfg_dp, cohort, weights, True), steps)
            k = cfg_plain.train.stage(stage).slices_per_subject
            rows.append(
                {
                    "benchmark": "dp_step",
                    "key": f"{name} {stage} B={batch} k={k}",
                    "stage": stage,
                    "config": name,
                    "batch": batch,
                    "dp_mean_batch": round(mean_b, 2),
                    "non_dp_s_per_step": round(plain, 3),
                    "dp_s_per_step": round(dp_s, 3),
                    "dp_over_non_dp": round(dp_s / plain, 2),
                    "peak_rss_gib": round(peak_rss_gib(), 2),
                    **context(),
                }
            )
    emit({"benchmark": "dp_step", "rows": rows})
    if args.quick or args.no_record:
        return
    columns = [
        "stage/config", "non_dp_s_per_step", "dp_s_per_step", "dp_over_non_dp",
        "dp_mean_batch", "peak_rss_gib", "machine", "date",
    ]  # fmt: skip
    for row in rows:
        record("dp_step", row["key"], columns, row, "python -m benchmarks.dp_step")


if __name__ == "__main__":
    main()
