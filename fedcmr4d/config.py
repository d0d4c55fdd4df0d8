"""YAML configuration, validated at load time into typed pydantic models.

A config is one YAML file (see ``fedcmr4d/configs/``: ``tiny``, ``tiny-dp``, ``cpu-small``,
``paper``, ``paper-dp``). Every key is checked: unknown keys, wrong types and out-of-range values
produce one :class:`~fedcmr4d.errors.ConfigError` line per problem naming the file, the dotted key
and what is allowed. ``--set dotted.key=value`` overrides are parsed as YAML scalars and validated
like the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedcmr4d.errors import ConfigError
from fedcmr4d.stages import Stage

PACKAGED_CONFIGS = Path(__file__).parent / "configs"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Geometry every stage agrees on. Cines are (X, Y, Z, T) = (size, size, slices, frames)."""

    image_size: int = Field(384, ge=16, description="in-plane crop/pad size (pixels = mm)")
    frames: int = Field(32, ge=4, description="frames per cardiac cycle after resampling")
    slices: int = Field(6, ge=1, description="slices per subject stack fed to stage 2")
    holdout_fraction: float = Field(0.2, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _divisible(self) -> DataConfig:
        if self.image_size % 4 or self.frames % 4:
            raise ValueError("image_size and frames must be divisible by 4 (the VQ-VAE is 4x down)")
        return self


#: How sampled latents may reach the decoder, per stage-1 quantizer (``diffusion.decode_latents``).
DECODE_MODES: dict[str, tuple[str, ...]] = {
    "cosine": ("unit_sphere", "nearest_code"),
    "fsq": ("clamp", "nearest_code"),
}


def check_fsq_levels(levels: Sequence[int]) -> list[int]:
    """FSQ levels as a list; raises ``ValueError`` unless every entry is an odd integer >= 3.

    Odd counts put a level at 0, so ``round(tanh(z) * (L - 1) / 2)`` needs no half-step offset.
    The one place of this rule: the config validator and :mod:`fedcmr4d.models.fsq` call it.
    """
    out = [int(v) for v in levels]
    if not out or any(v < 3 or v % 2 == 0 for v in out):
        raise ValueError(f"fsq_levels must be odd integers >= 3, got {list(levels)}")
    return out


class AutoencoderConfig(_Strict):
    """Stage-1 spatiotemporal VQ-VAE on 2D+t slices (1 x H x W x T)."""

    channels: list[int] = Field(default_factory=lambda: [32, 64], min_length=2, max_length=2)
    num_res_layers: int = Field(1, ge=0)
    num_res_channels: list[int] = Field(default_factory=lambda: [32, 64])
    num_embeddings: int = Field(1024, ge=2)
    embedding_dim: int = Field(8, ge=1)
    commitment_cost: float = Field(0.25, ge=0)
    entropy_weight: float = Field(0.1, ge=0)
    entropy_usage: Literal["batch", "sample"] = Field(
        "sample", description="code usage of the entropy loss averaged per slice or over the batch"
    )
    perceptual_weight: float = Field(0.0, ge=0)
    perceptual_weights_path: str | None = None
    adversarial_weight: float = Field(0.005, ge=0)
    adversarial_start_step: int = Field(0, ge=0)
    discriminator_channels: int = Field(32, ge=4)
    discriminator_layers: int = Field(3, ge=1)
    adversarial_loss: Literal["least_squares", "hinge"] = "least_squares"
    temporal_downsample: Literal[2, 4] = Field(4, description="4: T/4 latents (seed); 2: T/2")
    quantizer: Literal["cosine", "fsq"] = Field(
        "cosine",
        description="cosine: the seed's l2-normalised codebook (num_embeddings codes, codebook, "
        "commitment and entropy losses); fsq: finite scalar quantization, fsq_levels values per "
        "latent dimension and no codebook (docs/models.md)",
    )
    fsq_levels: list[int] = Field(
        default_factory=lambda: [5] * 8,
        description="fsq: odd number of values (>= 3) per latent dimension, one per embedding_dim",
    )

    @model_validator(mode="after")
    def _fsq(self) -> AutoencoderConfig:
        if self.quantizer != "fsq":
            return self
        if len(self.fsq_levels) != self.embedding_dim:
            raise ValueError(
                f"fsq_levels needs one entry per latent dimension (embedding_dim "
                f"{self.embedding_dim}), got {self.fsq_levels}"
            )
        check_fsq_levels(self.fsq_levels)
        if self.entropy_weight != 0:
            raise ValueError(
                "entropy_weight must be 0 with quantizer fsq (it has no codebook whose usage "
                f"the loss could reward), got {self.entropy_weight}"
            )
        return self

    def adversarial_active(self, step: int) -> bool:
        """Whether the adversarial loss (and the discriminator's step) is on at ``step``.

        The one place of this rule: the stage-1 step and the DP plan both ask it.
        """
        return self.adversarial_weight > 0 and step >= self.adversarial_start_step


class DiffusionConfig(_Strict):
    """Stage-2 latent diffusion UNet on (slices * 8) x H/4 x W/4 x T/4 latent stacks."""

    channels: list[int] = Field(default_factory=lambda: [64, 128, 128], min_length=1)
    attention_levels: list[bool] = Field(default_factory=lambda: [False, False, True])
    num_res_blocks: int = Field(1, ge=1)
    num_head_channels: int = Field(32, ge=1)
    norm_num_groups: int = Field(32, ge=1)
    timesteps: int = Field(300, ge=2)
    schedule: Literal["cosine", "linear_beta", "scaled_linear_beta"] = "cosine"
    prediction: Literal["v_prediction", "epsilon", "sample"] = "v_prediction"
    huber_delta: float = Field(1.0, gt=0)
    min_snr_gamma: float | None = Field(
        None,
        gt=0,
        description="Min-SNR-gamma loss weighting (Hang et al. 2023; 5 is the paper's value); "
        "null: every timestep weighs 1",
    )
    sample_steps: int = Field(50, ge=1)
    sampler: Literal["ddim", "ddpm"] = "ddim"
    decode_latents: Literal["unit_sphere", "nearest_code", "clamp"] = Field(
        "unit_sphere",
        description="how a sampled latent reaches the decoder: l2-normalised (unit_sphere, "
        "cosine quantizer), clamped to [-1, 1] (clamp, fsq) or put on its nearest code "
        "(nearest_code, either; with the cosine codebook it erodes the small end-systolic "
        "pool, and its rounding turns float-level differences between machines or thread "
        "counts into different cines, which a site's re-sampling check refuses; "
        "docs/models.md)",
    )
    stack_slices: int | None = Field(
        None, ge=1, description="slices per latent stack; null: data.slices; 1: slice-wise baseline"
    )

    @model_validator(mode="after")
    def _levels(self) -> DiffusionConfig:
        if len(self.attention_levels) != len(self.channels):
            raise ValueError("attention_levels must have one entry per channels entry")
        return self


class StageTrainConfig(_Strict):
    """Optimisation settings of one stage (local steps per round in federation)."""

    steps: int = Field(100, ge=1)
    batch_size: int = Field(4, ge=1)
    lr: float = Field(1e-4, gt=0)
    lr_discriminator: float = Field(2e-5, gt=0)
    betas: list[float] = Field(default_factory=lambda: [0.5, 0.9], min_length=2, max_length=2)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant",
        description="after the warm-up: constant, or cosine decay to min_lr_ratio x lr at the "
        "stage's last step (local: steps; federated: rounds x local steps)",
    )
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine: the last step's lr / lr")
    grad_clip: float = Field(1.0, gt=0)
    grad_accumulation: int = Field(1, ge=1)
    slices_per_subject: int = Field(1, ge=1, description="random slices drawn per subject per step")
    ema_decay: float = Field(0.0, ge=0, lt=1)
    augment: bool = Field(
        False,
        description="stage 1 only: mirror each drawn slice along x and/or y and shift its "
        "frames cyclically at random, so the autoencoder learns the anatomy rather than its "
        "training subjects (the membership audit measures the difference)",
    )
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(0, ge=0, description="0: only at the end")


class SegmenterTrainConfig(StageTrainConfig):
    """The federated segmenter stage (the network is ``evaluate.segmenter_features``, as for
    ``fedcmr4d train segmenter``); its own defaults, so a partial override keeps the rest."""

    steps: int = Field(50, ge=1)
    batch_size: int = Field(4, ge=1, description="subjects per step")
    lr: float = Field(2e-3, gt=0)
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.999], min_length=2, max_length=2)
    slices_per_subject: int = Field(
        4, ge=1, description="labelled frames drawn per subject per step"
    )


class TrainConfig(_Strict):
    autoencoder: StageTrainConfig = Field(default_factory=StageTrainConfig)
    diffusion: StageTrainConfig = Field(default_factory=StageTrainConfig)
    segmenter: SegmenterTrainConfig = Field(default_factory=SegmenterTrainConfig)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    channels_last: bool = True
    num_workers: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _augment_is_stage_1(self) -> TrainConfig:
        for name in ("diffusion", "segmenter"):
            if getattr(self, name).augment:
                raise ValueError(
                    f"train.{name}.augment: only the autoencoder augments (train.autoencoder."
                    "augment); the segmenter has its own, stage 2 trains on unaugmented latents"
                )
        return self

    def stage(self, stage: Stage) -> StageTrainConfig:
        """The optimisation settings of ``stage`` (``train.<stage>``)."""
        return {
            Stage.AUTOENCODER: self.autoencoder,
            Stage.DIFFUSION: self.diffusion,
            Stage.SEGMENTER: self.segmenter,
        }[Stage.parse(stage)]


class PrivacyConfig(_Strict):
    """DP-SGD per site; the subject is the privacy unit (DESIGN.md, Privacy model)."""

    enabled: bool = False
    target_epsilon: float = Field(10.0, gt=0)
    target_delta: float | None = Field(None, gt=0, lt=1, description="default: 1 / (10 N)")
    noise_multiplier: float | None = Field(1.0, ge=0, description="null: derive from budget")
    max_grad_norm: float = Field(1.0, gt=0)
    accountant: Literal["rdp", "prv", "gdp"] = "rdp"
    grad_sample_mode: Literal["functorch"] = Field(
        "functorch",
        description="per-subject gradients by torch.func.vmap; Opacus's per-row hooks/ghost "
        "modes do not bound a subject whose loss couples its rows (docs/privacy.md)",
    )
    optimizer: Literal["train", "sgd"] = Field(
        "train", description="under DP: the train section's AdamW, or SGD with momentum"
    )
    sgd_lr: float = Field(0.02, gt=0, description="learning rate when optimizer is sgd")
    sgd_momentum: float = Field(0.9, ge=0, lt=1)


class FederationConfig(_Strict):
    rounds_autoencoder: int = Field(2, ge=0)
    rounds_diffusion: int = Field(2, ge=0)
    rounds_segmenter: int = Field(2, ge=0, description="rounds of the segmenter stage")
    local_steps_autoencoder: int | None = Field(
        None, ge=1, description="local steps per round (null: train.autoencoder.steps)"
    )
    local_steps_diffusion: int | None = Field(
        None, ge=1, description="local steps per round (null: train.diffusion.steps)"
    )
    local_steps_segmenter: int | None = Field(
        None, ge=1, description="local steps per round (null: train.segmenter.steps)"
    )
    strategy: Literal["fedavg", "fedadam", "fedprox", "fedtrimmedavg", "fedmedian", "krum"] = (
        "fedavg"
    )
    proximal_mu: float = Field(0.0, ge=0)
    min_nodes: int = Field(
        2, ge=1, description="sites connected before a round starts (2: no single-site model)"
    )
    min_accepted: int = Field(
        2,
        ge=1,
        description="quorum: a round with fewer accepted updates is not counted or checkpointed",
    )
    fraction_train: float = Field(1.0, gt=0, le=1)
    max_update_norm_ratio: float = Field(10.0, gt=1, description="reject updates this far out")
    max_update_norm: float = Field(
        1.0,
        gt=0,
        description="reject an update whose distance to the global model exceeds this multiple "
        "of the global model's L2 norm (holds for a single reply)",
    )
    max_num_examples: int = Field(
        1_000_000, ge=1, description="reject a reply claiming more training subjects"
    )
    loss_weighting: dict[Stage, float] = Field(
        default_factory=dict,
        description="stage -> q: a site's aggregation weight is num-examples x (its training "
        "loss / the median site's)^q, bounded by loss_weighting_cap (q-FFL style; a stage not "
        "named, or q 0: num-examples alone)",
    )
    loss_weighting_cap: float = Field(
        4.0,
        ge=1,
        description="most the loss factor may multiply or divide a site's weight (bounds a "
        "site that overstates its loss)",
    )
    server_lr: float = Field(0.01, gt=0, description="FedAdam server learning rate (eta)")
    trimmed_beta: float = Field(0.2, ge=0, lt=0.5, description="FedTrimmedAvg cut per side")
    krum_malicious: int = Field(0, ge=0, description="Krum: sites assumed malicious")

    @model_validator(mode="after")
    def _loss_powers(self) -> FederationConfig:
        bad = {k: v for k, v in self.loss_weighting.items() if not 0 <= v <= 16}
        if bad:
            raise ValueError(f"loss_weighting powers must be within [0, 16], got {bad}")
        return self

    def loss_power(self, stage: Stage | str) -> float:
        """q of the loss-weighted aggregation of ``stage`` (0: weighted by num-examples only)."""
        return float(self.loss_weighting.get(Stage.parse(stage), 0.0))

    def rounds(self, stage: Stage) -> int:
        """Planned rounds of ``stage`` (``rounds_<stage>``)."""
        return int(getattr(self, f"rounds_{Stage.parse(stage).value}"))

    def local_steps(self, stage: Stage) -> int | None:
        """``local_steps_<stage>``: local steps per round, or None for ``train.<stage>.steps``."""
        steps = getattr(self, f"local_steps_{Stage.parse(stage).value}")
        return None if steps is None else int(steps)


class AuditConfig(_Strict):
    """Memorization audit (docs/steward.md). At a federated site the site's own installed
    config supplies these values, never the coordinator's message (docs/privacy.md)."""

    copy_alpha: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="family-wise false-alarm rate of the copy test on a fresh cohort "
        "(Bonferroni over synthetic subjects and sites of the Weibull tail p-values)",
    )
    min_holdout: int = Field(
        2, ge=2, description="holdout subjects a site needs to calibrate the copy test"
    )
    max_shift: int = Field(2, ge=0, description="in-plane shift searched (voxels)")
    flips: bool = Field(True, description="search mirrored copies (x, y, both)")
    rotations_deg: list[float] = Field(
        default_factory=lambda: [-10.0, 10.0], description="in-plane rotations searched"
    )
    dcr_tolerance: float = Field(
        0.2, ge=0, le=0.5, description="dcr_share may exceed its no-memorization value by this"
    )
    dcr_alpha: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="an excess dcr_share fails only when its binomial p-value is below this",
    )
    membership_alpha: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="membership inference fails when its one-sided Mann-Whitney p-value is "
        "below this (the false-alarm rate for a model that memorised nothing)",
    )
    membership_draws: int = Field(
        4, ge=1, description="fixed (timestep, noise) draws averaged per subject's diffusion loss"
    )
    verify_resample: bool = Field(
        True, description="a site re-samples the cohort's first batch from the weights it gets"
    )
    fov_mm: float = Field(
        160.0, gt=0, description="in-plane field of view compared (capped by the synthetic one)"
    )
    grid: int = Field(32, ge=4, description="in-plane pixels of the audit representation")
    slices: int = Field(
        6, ge=1, description="through-plane positions the whole stack is resampled to"
    )
    frames: int = Field(16, ge=2, description="frames per cycle after periodic resampling")
    lowpass_sigma: float = Field(0.7, ge=0, description="Gaussian low-pass, grid pixels")
    candidates: int = Field(
        8, ge=0, description="coarse candidates scored exactly per subject; 0: every pair"
    )


class EvaluateConfig(_Strict):
    feature_weights_path: str | None = None
    segmenter_steps: int = Field(200, ge=1)
    segmenter_batch_size: int = Field(16, ge=1)
    segmenter_lr: float = Field(2e-3, gt=0)
    segmenter_features: list[int] = Field(
        default_factory=lambda: [16, 16, 32, 64, 128, 16],
        min_length=6,
        max_length=6,
        description="MONAI BasicUNet channels: 4 encoder levels, bottleneck, last decoder level",
    )
    report_subjects: int = Field(4, ge=1, description="synthetic subjects shown as cine GIFs")
    utility_seeds: int = Field(
        1,
        ge=1,
        description=(
            "segmenter seeds per utility arm (seed, seed + 1, ...): each arm's figures are the "
            "mean over them, with the spread and each arm's gap to arm (a) paired by seed"
        ),
    )
    utility_real_share: float | None = Field(
        None,
        gt=0,
        lt=1,
        description=(
            "utility arm (c): the share of the segmenter's frame draws taken from the real "
            "frames (the rest from the synthetic ones); null: both pooled, every frame equally "
            "likely"
        ),
    )


class Config(_Strict):
    """The whole run configuration."""

    name: str = "custom"
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    autoencoder: AutoencoderConfig = Field(default_factory=AutoencoderConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)

    @model_validator(mode="after")
    def _decode_mode(self) -> Config:
        allowed = DECODE_MODES[self.autoencoder.quantizer]
        if self.diffusion.decode_latents not in allowed:
            raise ValueError(
                f"diffusion.decode_latents {self.diffusion.decode_latents!r} does not apply to "
                f"autoencoder.quantizer {self.autoencoder.quantizer!r} (one of {allowed})"
            )
        return self

    def round_steps(self, stage: Stage | str) -> int:
        """Local steps a site takes in one federated round of ``stage``.

        ``federation.local_steps_<stage>`` when set, else ``train.<stage>.steps`` (the local
        run's total): set it when ``train`` describes a long single-site run, as in ``paper``.

        Raises:
            ValueError: ``stage`` is not a training stage.
        """
        name = Stage.parse(stage)
        per_round = self.federation.local_steps(name)
        return per_round if per_round is not None else self.train.stage(name).steps

    def to_yaml(self) -> str:
        """The resolved config, as saved next to every checkpoint."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A file path, or the name of a packaged config (``tiny``, ``paper``, ...)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = PACKAGED_CONFIGS / f"{name_or_path}.yaml"
    if packaged.is_file():
        return packaged
    names = ", ".join(sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml")))
    raise ConfigError(f"{name_or_path}: no such config file (packaged configs: {names})")


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: --set {dotted}: '{key}' is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """``a.b=value`` -> ("a.b", yaml-parsed value)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected dotted.key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: value is not valid YAML ({exc})") from exc
    return key.strip(), value


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] in ("literal_error", "enum"):
            msg = f"must be one of {err.get('ctx', {}).get('expected', '')}"
        got = err.get("input")
        shown = "" if isinstance(got, dict) or err["type"] == "missing" else f" (got {got!r})"
        lines.append(f"{source}: {key}: {msg}{shown}")
    return "\n".join(lines)


def config_from_dict(tree: dict[str, Any], source: str = "<config>") -> Config:
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from None


def load_config(name_or_path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read, override and validate a config; raise :class:`ConfigError` naming file and key."""
    path = resolve_config_path(name_or_path)
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read YAML ({exc})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    for item in overrides or []:
        key, value = parse_override(item)
        _set_dotted(tree, key, value, str(path))
    return config_from_dict(tree, str(path))
