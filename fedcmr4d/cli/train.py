"""CLI commands: ``fedcmr4d train <stage>`` (the ``train`` group) and ``fedcmr4d sample``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from fedcmr4d.cli import app
from fedcmr4d.config import Config

train_app = typer.Typer(
    help="Train one stage on one site's cohort (the same code a federated site runs).",
    no_args_is_help=True,
)
app.add_typer(train_app, name="train")

_CONFIG = typer.Option(..., "--config", help="Config file or packaged name (tiny, cpu-small, ...).")
_DATA = typer.Option(..., "--data", help="Cohort folder (cohort.json + subject folders).")
_OUT = typer.Option(..., "--out", help="Output folder: checkpoint, curves.csv, curves.png.")
_SET = typer.Option(None, "--set", help="Override one config value: dotted.key=value.")
_RESUME = typer.Option(False, "--resume", help="Continue from the checkpoint in --out.")
_QUIET = typer.Option(False, "--quiet", help="No progress bar.")


def _privacy_for(
    cfg: Config, out: Path, data: Path, stage: str, autoencoder: Path | None = None
) -> object | None:
    """The privacy hook for local DP training, when the config enables DP."""
    from fedcmr4d.privacy.local import local_site_privacy

    return local_site_privacy(cfg, data, out, stage, autoencoder_dir=autoencoder)


def _report(out: Path, step: int, metrics: dict[str, float]) -> None:
    typer.echo(json.dumps({"out": str(out), "step": step, "holdout": metrics}, sort_keys=True))


@train_app.command("autoencoder")
def train_autoencoder(
    config: str = _CONFIG,
    data: Path = _DATA,
    out: Path = _OUT,
    set_: list[str] | None = _SET,
    resume: bool = _RESUME,
    quiet: bool = _QUIET,
) -> None:
    """Stage 1: the spatiotemporal VQ-VAE (+ patch discriminator) on 2D+t slices."""
    from fedcmr4d.config import load_config
    from fedcmr4d.train.local import train_local

    cfg = load_config(config, set_ or [])
    result = train_local(
        "autoencoder",
        cfg,
        data,
        out,
        resume=resume,
        progress=not quiet,
        privacy=_privacy_for(cfg, out, data, "autoencoder"),
    )
    _report(result.out_dir, result.step, result.metrics)


@train_app.command("diffusion")
def train_diffusion(
    config: str = _CONFIG,
    data: Path = _DATA,
    autoencoder: Path = typer.Option(..., "--autoencoder", help="Stage-1 checkpoint folder."),
    out: Path = _OUT,
    set_: list[str] | None = _SET,
    resume: bool = _RESUME,
    quiet: bool = _QUIET,
) -> None:
    """Stage 2: latent diffusion on 6-slice latent stacks of the frozen stage-1 model."""
    from fedcmr4d.config import load_config
    from fedcmr4d.train.local import train_local

    cfg = load_config(config, set_ or [])
    result = train_local(
        "diffusion",
        cfg,
        data,
        out,
        autoencoder_dir=autoencoder,
        resume=resume,
        progress=not quiet,
        privacy=_privacy_for(cfg, out, data, "diffusion", autoencoder),
    )
    _report(result.out_dir, result.step, result.metrics)


@app.command("sample")
def sample(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Stage-2 checkpoint folder."),
    subjects: int = typer.Option(..., "--subjects", min=1, help="Synthetic subjects to write."),
    out: Path = typer.Option(..., "--out", help="Output cohort folder."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampling generator."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Subjects per diffusion pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    slicewise: bool = typer.Option(
        False, "--slicewise", help="Checkpoint is a slice-wise baseline (stack_slices: 1)."
    ),
    raw: bool = typer.Option(
        False, "--raw-weights", help="Use the raw UNet weights even if the checkpoint has EMA."
    ),
    quiet: bool = _QUIET,
) -> None:
    """Synthetic cohort from a stage-2 checkpoint (which names its autoencoder)."""
    from fedcmr4d.release.sample import sample_cohort, sample_slicewise

    fn = sample_slicewise if slicewise else sample_cohort
    cohort = fn(
        checkpoint,
        subjects,
        out,
        seed=seed,
        batch_size=batch_size,
        device=device,
        progress=not quiet,
        use_ema=not raw,
    )
    typer.echo(json.dumps({"out": str(out), "subjects": len(cohort)}))
