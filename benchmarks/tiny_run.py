"""A really trained, really small generator for the ``--quick`` modes of the benchmarks.

``--quick`` must run in seconds, so the sampling and quality benchmarks cannot wait for a
``cpu-small`` run. Instead they train the ``tiny`` config for a few steps on a small phantom
cohort, through the same code ``fedcmr4d train`` runs (:func:`fedcmr4d.train.local.train_local`):
stage 1, the one-pass stage 2 (6-slice stacks) and the slice-wise stage 2 (``stack_slices: 1``),
plus a 4-step evaluation segmenter (the FID feature network).
The checkpoints are real but barely trained: good for checking the plumbing and output shape,
never for a figure.

    python -m benchmarks.tiny_run --out /tmp/tiny-run   # build it once (tests share it)
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

from fedcmr4d.config import Config, load_config
from fedcmr4d.data.cohort import open_cohort
from fedcmr4d.data.phantom import write_phantom_cohort
from fedcmr4d.evaluate.segmenter import WEIGHTS_FILE as SEGMENTER_FILE
from fedcmr4d.evaluate.segmenter import train_segmenter
from fedcmr4d.train.checkpoint import WEIGHTS_FILE
from fedcmr4d.train.local import train_local

#: Phantom subjects in the tiny cohort (holdout 25 % -> 6 training subjects).
SUBJECTS = 8


@dataclass(frozen=True)
class TinyRun:
    """Folders of a tiny trained run: cohort, the three generator checkpoints, a segmenter."""

    root: Path

    @property
    def cohort(self) -> Path:
        return self.root / "phantom"

    @property
    def autoencoder(self) -> Path:
        return self.root / "autoencoder"

    @property
    def diffusion(self) -> Path:
        return self.root / "diffusion"

    @property
    def slicewise(self) -> Path:
        return self.root / "diffusion-slicewise"

    @property
    def segmenter(self) -> Path:
        return self.root / "segmenter"


def tiny_config(overrides: list[str] | None = None) -> Config:
    """The packaged ``tiny`` config (data 32 x 32 x 6 slices x 16 frames), with overrides."""
    return load_config("tiny", overrides or [])


def _done(checkpoint: Path) -> bool:
    return (checkpoint / WEIGHTS_FILE).is_file() and (checkpoint / "meta.json").is_file()


def build_tiny_run(root: str | Path) -> TinyRun:
    """Write the phantom cohort and train the three checkpoints under ``root``.

    Anything already complete there (a checkpoint with weights and meta) is reused, so a test
    session can build this once and hand it to several benchmark scripts.
    """
    logging.getLogger("fedcmr4d").setLevel(logging.WARNING)
    run = TinyRun(Path(root))
    cfg = tiny_config()
    if not (run.cohort / "cohort.json").is_file():
        write_phantom_cohort(
            run.cohort,
            SUBJECTS,
            seed=11,
            image_size=cfg.data.image_size,
            slices=cfg.data.slices,
            frames=cfg.data.frames,
        )
    if not _done(run.autoencoder):
        train_local("autoencoder", cfg, run.cohort, run.autoencoder, progress=False)
    if not _done(run.diffusion):
        train_local(
            "diffusion",
            cfg,
            run.cohort,
            run.diffusion,
            autoencoder_dir=run.autoencoder,
            progress=False,
        )
    if not _done(run.slicewise):
        train_local(
            "diffusion",
            tiny_config(["diffusion.stack_slices=1"]),
            run.cohort,
            run.slicewise,
            autoencoder_dir=run.autoencoder,
            progress=False,
        )
    if not (run.segmenter / SEGMENTER_FILE).is_file():
        seg_cfg = tiny_config(["evaluate.segmenter_steps=4", "evaluate.segmenter_batch_size=4"])
        train_segmenter(open_cohort(run.cohort), run.segmenter, seg_cfg)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for cohort + checkpoints")
    args = parser.parse_args()
    run = build_tiny_run(args.out)
    print(run.root)


if __name__ == "__main__":
    main()
