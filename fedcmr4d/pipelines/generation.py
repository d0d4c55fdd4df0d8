"""Synthetic cohorts from a stage-2 checkpoint.

One-pass sampling (:func:`sample_cohort`): each subject is ONE (S * D, h, w, t) latent stack
denoised in one diffusion pass, split into S slice latents, snapped to the nearest codes and
decoded slice by slice into an (X, Y, S, T) cine. The slice-wise baseline
(:func:`sample_slicewise`) samples each of the S slices independently from a model trained with
``diffusion.stack_slices: 1`` -- the approach the seed improves on (neighbouring slices know
nothing of each other).

Outputs are ordinary cohorts (``write_subject`` per subject, then ``write_cohort_index`` with
provenance: checkpoint SHA-256, config name, seed, privacy per site if recorded, code version).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from torch import Tensor, nn

from fedcmr4d.config import Config
from fedcmr4d.data.cohort import (
    COHORT_SPACING_MM,
    Cohort,
    Subject,
    cohort_affine,
    open_cohort,
    write_cohort_index,
    write_subject,
)
from fedcmr4d.devices import resolve_device
from fedcmr4d.errors import InputError
from fedcmr4d.io import sha256_file
from fedcmr4d.models.denoiser import unstack_slices
from fedcmr4d.models.vqvae import SpatioTemporalVQVAE
from fedcmr4d.progress import progress_bar
from fedcmr4d.schedulers import build_sample_scheduler
from fedcmr4d.train.checkpoint import (
    WEIGHTS_FILE,
    Checkpoint,
    code_version,
    load_autoencoder_of,
    load_checkpoint,
)
from fedcmr4d.train.models import build_denoiser, stack_slices_of, sub_weights
from fedcmr4d.train.trainer import load_frozen_autoencoder

#: Frame time of synthetic cines: a 75 bpm cycle (800 ms) over ``data.frames`` frames. A fixed
#: value, not a statistic of any site's data.
CYCLE_MS = 800.0


@dataclass
class Generator4D:
    """Everything needed to sample: config, denoiser, frozen autoencoder, latent scale."""

    cfg: Config
    unet: nn.Module
    autoencoder: SpatioTemporalVQVAE
    latent_scale: float
    stack_slices: int
    checkpoint: Checkpoint
    device: torch.device
    used_ema: bool = False

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """(S * D, h, w, t) of one stack."""
        d, h, w, t = self.autoencoder.latent_shape(self.cfg.data.image_size, self.cfg.data.frames)
        return (self.stack_slices * d, h, w, t)


def assemble_generator(
    cfg: Config,
    diffusion_weights: dict[str, Tensor],
    autoencoder_weights: dict[str, Tensor],
    *,
    use_ema: bool,
    device: torch.device,
    latent_scale: float | None = None,
    checkpoint: Checkpoint | None = None,
) -> Generator4D:
    """A generator from stage-2 and stage-1 weights already read (and checked) by the caller.

    The one place that builds the denoiser from weights: ``ema.unet.*`` when ``use_ema`` and the
    weights have them, else ``unet.*``. ``latent_scale`` None takes the stage-1 quantizer's own
    (a site answering an audit query has no stage-2 ``meta.json``).

    Raises:
        RuntimeError: torch's message when the stage-2 weights do not fit ``cfg`` (each caller
            names its own source in the error it raises).
    """
    unet = build_denoiser(cfg)
    ema = sub_weights(diffusion_weights, "ema.unet") if use_ema else {}
    unet.load_state_dict(ema or sub_weights(diffusion_weights, "unet"), strict=True)
    unet.to(device).eval()
    autoencoder = load_frozen_autoencoder(cfg, autoencoder_weights).to(device)
    if latent_scale is None:
        latent_scale = float(autoencoder.quantizer.latent_scale())
    return Generator4D(
        cfg=cfg,
        unet=unet,
        autoencoder=autoencoder,
        latent_scale=latent_scale,
        stack_slices=stack_slices_of(cfg),
        checkpoint=checkpoint,  # type: ignore[arg-type]
        device=device,
        used_ema=bool(ema),
    )


def load_generator(
    checkpoint_dir: str | Path, device: str = "auto", *, use_ema: bool = True
) -> Generator4D:
    """Load a stage-2 checkpoint and the stage-1 checkpoint it names (relative path, SHA-256).

    ``use_ema``: take the ``ema.unet.*`` weights when the checkpoint has them (else ``unet.*``).
    """
    ckpt = load_checkpoint(checkpoint_dir)
    if ckpt.stage != "diffusion":
        raise InputError(f"{checkpoint_dir}: a {ckpt.stage} checkpoint; sampling needs diffusion")
    if "latent_scale" not in ckpt.meta:
        raise InputError(f"{ckpt.root / 'meta.json'}: missing 'latent_scale'")
    ae_ckpt = load_autoencoder_of(ckpt)  # relative to the stage-2 folder, SHA-256 checked
    cfg = ckpt.cfg
    dev = resolve_device(cfg.train.device if device == "auto" else device)
    try:
        return assemble_generator(
            cfg,
            ckpt.weights,
            ae_ckpt.weights,
            use_ema=use_ema,
            device=dev,
            latent_scale=float(ckpt.meta["latent_scale"]),
            checkpoint=ckpt,
        )
    except RuntimeError as exc:
        raise InputError(
            f"{ckpt.root / WEIGHTS_FILE}: weights do not match config ({exc})"
        ) from None


@torch.no_grad()
def sample_latent_stacks(
    gen: Generator4D,
    n: int,
    generator: torch.Generator,
    on_step: Callable[[int], None] | None = None,
) -> Tensor:
    """n unscaled latent stacks (n, S, D, h, w, t) from one reverse pass."""
    scheduler = build_sample_scheduler(gen.cfg.diffusion, clip=gen.latent_scale)
    stacks = denoise(
        gen.unet,
        scheduler,
        (n, *gen.latent_shape),
        generator=generator,
        device=gen.device,
        on_step=on_step,
    )
    return unstack_slices(stacks / gen.latent_scale, gen.autoencoder.embedding_dim)


@torch.no_grad()
def decode_subject(gen: Generator4D, slice_latents: Tensor) -> np.ndarray:
    """(S, D, h, w, t) latents -> decoded slice by slice (``diffusion.decode_latents``) ->
    (X, Y, S, T) cine."""
    slices = gen.autoencoder.decode_stage_2_outputs(
        slice_latents.to(gen.device), gen.cfg.diffusion.decode_latents
    )  # (S, 1, H, W, T)
    cine = slices[:, 0].clamp(0, 1).permute(1, 2, 0, 3)
    return cine.float().cpu().numpy()


def _provenance(gen: Generator4D, seed: int, mode: str, batch_size: int) -> dict[str, Any]:
    meta = gen.checkpoint.meta
    provenance: dict[str, Any] = {
        "source": "synthetic",
        "sampling": mode,
        "checkpoint": gen.checkpoint.root.name,  # a name, not a path of this machine
        "checkpoint_sha256": sha256_file(gen.checkpoint.root / WEIGHTS_FILE),
        "autoencoder_sha256": meta["autoencoder"]["sha256"],
        "config_name": gen.cfg.name,
        "seed": seed,
        "batch_size": batch_size,
        "sampler": gen.cfg.diffusion.sampler,
        "sample_steps": gen.cfg.diffusion.sample_steps,
        "decode_latents": gen.cfg.diffusion.decode_latents,
        "weights": "ema" if gen.used_ema else "raw",
        "code_version": code_version(),
        "checkpoint_code_version": meta.get("code_version"),
    }
    sites = privacy_sites(meta)
    if sites:
        provenance["privacy"] = {"sites": sites}
    return provenance


def privacy_sites(meta: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{site: {stage: {"epsilon", "delta", "accountant"}}}`` from a stage-2 checkpoint's meta.

    A federated checkpoint carries it as ``privacy.sites``; a local DP run's ledger (one
    ``epsilon`` for all its segments together) becomes the one site ``local``, its stage the
    segments' stages joined by ``+``. Empty without DP.
    """
    privacy = meta.get("privacy")
    if not isinstance(privacy, dict):
        return {}
    if isinstance(privacy.get("sites"), dict):
        return {
            str(site): {
                str(stage): {k: v.get(k) for k in ("epsilon", "delta", "accountant")}
                for stage, v in stages.items()
                if isinstance(v, dict)
            }
            for site, stages in privacy["sites"].items()
            if isinstance(stages, dict)
        }
    if "epsilon" in privacy:
        stages = [str(s.get("stage")) for s in privacy.get("segments", []) if isinstance(s, dict)]
        label = "+".join(dict.fromkeys(stages)) or "all"
        entry = {k: privacy.get(k) for k in ("epsilon", "delta", "accountant")}
        return {"local": {label: entry}}
    return {}


def _write(gen: Generator4D, out: Path, subject_id: str, cine: np.ndarray, seed: int) -> None:
    frames = gen.cfg.data.frames
    write_subject(
        out,
        Subject(
            subject_id=subject_id,
            cine=cine,
            affine=cohort_affine(gen.cfg.data.image_size),
            frame_ms=CYCLE_MS / frames,
            meta={"source": "synthetic", "seed": seed},
        ),
    )


def _run(
    checkpoint_dir: str | Path,
    n_subjects: int,
    out_dir: str | Path,
    *,
    seed: int,
    batch_size: int,
    device: str,
    progress: bool,
    slicewise: bool,
    use_ema: bool = True,
) -> Cohort:
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    gen = load_generator(checkpoint_dir, device, use_ema=use_ema)
    slices = gen.cfg.data.slices
    if slicewise and gen.stack_slices != 1:
        raise InputError(
            f"{checkpoint_dir}: stack_slices={gen.stack_slices}; the slice-wise baseline needs a "
            "model trained with diffusion.stack_slices: 1"
        )
    if not slicewise and gen.stack_slices != slices:
        raise InputError(
            f"{checkpoint_dir}: stack_slices={gen.stack_slices} != data.slices={slices}; "
            "use sample_slicewise (--slicewise) for a slice-wise model"
        )
    out = Path(out_dir)
    steps = len(build_sample_scheduler(gen.cfg.diffusion).timesteps)
    per_subject = slices if slicewise else 1
    ids = []
    with progress_bar(progress) as bar:
        n_batches = -(-(n_subjects * per_subject) // batch_size)
        task = bar.add_task("sampling", total=n_batches * steps) if bar else None

        def on_step(_: int) -> None:
            if bar is not None and task is not None:
                bar.advance(task)

        for subject_id, cine in generate_subjects(
            gen, n_subjects, seed=seed, batch_size=batch_size, slicewise=slicewise, on_step=on_step
        ):
            _write(gen, out, subject_id, cine, seed)
            ids.append(subject_id)
    mode = "slicewise" if slicewise else "one-pass"
    write_cohort_index(
        out,
        ids,
        spacing=COHORT_SPACING_MM,
        frames=gen.cfg.data.frames,
        provenance=_provenance(gen, seed, mode, batch_size),
    )
    return open_cohort(out)


def generate_subjects(
    gen: Generator4D,
    n_subjects: int,
    *,
    seed: int,
    batch_size: int,
    slicewise: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> Iterator[tuple[str, np.ndarray]]:
    """(``synthNNNN``, (X, Y, S, T) cine) for every subject, in order; deterministic given the
    weights, ``seed`` and ``batch_size`` (a site re-samples a cohort with it to verify it)."""
    slices = gen.cfg.data.slices
    generator = torch.Generator().manual_seed(seed)
    # Slice-wise: every slice is its own sample, so a subject costs S passes' worth of samples.
    per_subject = slices if slicewise else 1
    total = n_subjects * per_subject
    pending: list[Tensor] = []  # slice latents (D, h, w, t) of the subject being assembled
    written = 0
    for start in range(0, total, batch_size):
        n = min(batch_size, total - start)
        latents = sample_latent_stacks(gen, n, generator, on_step)  # (n, S', D, h, w, t)
        for item in latents:
            pending.extend(item)
            while len(pending) >= slices and written < n_subjects:
                cine = decode_subject(gen, torch.stack(pending[:slices]))
                pending = pending[slices:]
                yield f"synth{written:04d}", cine
                written += 1


def sample_cohort(
    checkpoint_dir: str | Path,
    n_subjects: int,
    out_dir: str | Path,
    *,
    seed: int = 0,
    batch_size: int = 4,
    device: str = "auto",
    progress: bool = False,
    use_ema: bool = True,
) -> Cohort:
    """One diffusion pass per subject -> (X, Y, S, T) cines -> a cohort in ``out_dir``."""
    return _run(
        checkpoint_dir,
        n_subjects,
        out_dir,
        seed=seed,
        batch_size=batch_size,
        device=device,
        progress=progress,
        slicewise=False,
        use_ema=use_ema,
    )


def sample_slicewise(
    checkpoint_dir: str | Path,
    n_subjects: int,
    out_dir: str | Path,
    *,
    seed: int = 0,
    batch_size: int = 4,
    device: str = "auto",
    progress: bool = False,
    use_ema: bool = True,
) -> Cohort:
    """Baseline: S independent single-slice samples per subject, stacked into a cohort.

    ``batch_size`` counts slices (each slice is one sample of the 8-channel model).
    """
    return _run(
        checkpoint_dir,
        n_subjects,
        out_dir,
        seed=seed,
        batch_size=batch_size,
        device=device,
        progress=progress,
        slicewise=True,
        use_ema=use_ema,
    )


@torch.no_grad()
def denoise(
    unet: Callable[..., Tensor],
    scheduler: DDIMScheduler | DDPMScheduler,
    shape: tuple[int, ...],
    *,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    on_step: Callable[[int], None] | None = None,
) -> Tensor:
    """Run the reverse process from Gaussian noise of ``shape`` (N, C, h, w, t) to latents.

    The noise is drawn on the CPU from ``generator`` so that a seed gives the same samples on
    every device. ``on_step(i)`` is called after each timestep (progress bars).
    """
    sample = torch.randn(shape, generator=generator).to(device)
    for i, t in enumerate(scheduler.timesteps):
        timesteps = torch.full((shape[0],), int(t), device=device, dtype=torch.long)
        model_output = unet(x=sample, timesteps=timesteps)
        if isinstance(scheduler, DDIMScheduler):
            sample, _ = scheduler.step(model_output, int(t), sample, eta=0.0)
        else:
            sample, _ = _ddpm_step(scheduler, model_output, int(t), sample, generator)
        if on_step is not None:
            on_step(i)
    return sample


def _ddpm_step(
    scheduler: DDPMScheduler,
    model_output: Tensor,
    t: int,
    sample: Tensor,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """One DDPM step with the variance noise drawn on the CPU (device-independent seeds)."""
    if sample.device.type == "cpu":
        return scheduler.step(model_output, t, sample, generator=generator)
    cpu_prev, cpu_x0 = scheduler.step(model_output.cpu(), t, sample.cpu(), generator=generator)
    return cpu_prev.to(sample.device), cpu_x0.to(sample.device)
