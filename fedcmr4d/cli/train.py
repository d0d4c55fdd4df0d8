"""CLI commands: ``fedcmr4d train autoencoder|diffusion|segmenter`` (the ``train`` group)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from fedcmr4d.cli import app
from fedcmr4d.config import Config, load_config

if TYPE_CHECKING:
    from fedcmr4d.privacy.site import SitePrivacy

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
) -> SitePrivacy | None:
    """The site's privacy side for local DP training, when the config enables DP."""
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


@train_app.command("segmenter")
def train_segmenter_command(
    config: str = typer.Option("tiny", "--config", help="Config name or YAML file."),
    data: Path = typer.Option(..., "--data", help="Cohort folder with labels (ED/ES at least)."),
    out: Path = typer.Option(..., "--out", help="Checkpoint folder to write."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override one config value, e.g. evaluate.segmenter_steps=400."
    ),
) -> None:
    """Train the 2D LV/myocardium/RV segmenter (GroupNorm UNet) on a cohort's labelled frames.

    Writes `segmenter.safetensors`, `config.yaml` and `meta.json` to OUT. Its encoder is also the
    default feature network of `fedcmr4d evaluate`.

    Example: `fedcmr4d train segmenter --config cpu-small --data cohort/ --out runs/segmenter`
    """
    from fedcmr4d.data.cohort import open_cohort
    from fedcmr4d.evaluate.segmenter import train_segmenter

    cfg = load_config(config, overrides)
    result = train_segmenter(open_cohort(data), out, cfg)
    typer.echo(
        f"segmenter: {result.steps} steps on {result.train_frames} labelled frames of "
        f"{result.train_subjects} subjects, final loss {result.final_loss:.4f} -> {out}"
    )
