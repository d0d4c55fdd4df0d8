"""Typed views of Flower's run config (server side) and node config (site side).

Flower hands apps flat ``{kebab-key: bool | int | float | str}`` dicts. They are read once,
here, into dataclasses, so that a typo in a key is an error naming the key rather than a silent
default deep inside a handler.

Run config (``[tool.flwr.app.config]`` in pyproject.toml, ``flwr run --run-config``):

===========================  =====================================================================
key                          meaning
===========================  =====================================================================
``config``                   packaged config name (``tiny``...) or a YAML path on the coordinator
``overrides``                ``dotted.key=value`` items separated by ``;`` (like ``--set``)
``stages``                   comma list, in order, from ``autoencoder``, ``diffusion``,
                             ``segmenter``, ``audit``
``rounds-autoencoder``       rounds of stage 1; ``-1``: ``federation.rounds_autoencoder``
``rounds-diffusion``         rounds of stage 2; ``-1``: ``federation.rounds_diffusion``
``rounds-segmenter``         rounds of the segmenter; ``-1``: ``federation.rounds_segmenter``
``out-dir``                  coordinator folder: checkpoints, ``metrics.jsonl``/CSV/PNG
``resume``                   continue from the last checkpoint in ``out-dir``
``round-timeout``            seconds to wait for replies in one round
``evaluate``                 after each stage, ask every site for holdout metrics of the result
``synthetic-subjects``       stage audit: subjects sampled from the stage-2 model to audit
``synthetic-dir``            stage audit: audit this synthetic cohort instead of sampling one
``label-segmenter``          stage audit: label the sampled cohort with this segmenter checkpoint
                             (on the coordinator) before the audit; empty: the federated one
                             (``<out-dir>/segmenter``) when the segmenter stage ran, else none
``cohort-root``              simulation only: one cohort folder per site, sorted by name
``state-root``               simulation only: per-site state folders are created under it
===========================  =====================================================================

Node config (``flower-supernode --node-config``): ``cohort`` (path), ``holdout-fraction``,
``device``, ``state-dir``, ``site-name`` and the site's privacy policy
(:mod:`fedcmr4d.privacy.policy`: ``require-dp``, ``target-epsilon``, ``target-delta``,
``min-noise-multiplier``, ``max-grad-norm``, ``accountant``, ``max-sample-rate``,
``max-local-steps``, ``max-rounds``). Tests inject faults with their own apps (tests/federated),
never through these configs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fedcmr4d.config import Config, config_from_dict, load_config
from fedcmr4d.errors import ConfigError
from fedcmr4d.privacy.policy import SitePolicy
from fedcmr4d.stages import Stage

TRAIN_STAGES: tuple[str, ...] = tuple(s.value for s in Stage)
STAGES: tuple[str, ...] = (*TRAIN_STAGES, "audit")

ConfigValue = bool | int | float | str


def _typed(source: str, key: str, value: Any, kind: type) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is bool and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{source}: {key}: expected {kind.__name__}, got {value!r}")
    return value


@dataclass(frozen=True)
class RunSettings:
    """The ServerApp's run config, typed (see the module docstring for each key)."""

    config: str = "tiny"
    overrides: str = ""
    stages: str = "autoencoder,diffusion"
    rounds_autoencoder: int = -1
    rounds_diffusion: int = -1
    rounds_segmenter: int = -1
    out_dir: str = "runs/federated"
    resume: bool = False
    round_timeout: float = 3600.0
    evaluate: bool = True
    synthetic_subjects: int = 8
    synthetic_dir: str = ""
    label_segmenter: str = ""
    cohort_root: str = ""
    state_root: str = ""

    @classmethod
    def from_run_config(
        cls, run_config: Mapping[str, ConfigValue], source: str = "run config"
    ) -> RunSettings:
        """Parse Flower's run config; unknown keys and wrong types raise ConfigError."""
        known = {f.name.replace("_", "-"): f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in run_config.items():
            if key not in known:
                raise ConfigError(f"{source}: unknown key {key!r} (known: {sorted(known)})")
            kind = {"str": str, "int": int, "float": float, "bool": bool}[str(known[key].type)]
            values[known[key].name] = _typed(source, key, value, kind)
        settings = cls(**values)
        settings.stage_list()
        return settings

    def to_run_config(self) -> dict[str, ConfigValue]:
        """The kebab-case dict Flower would hand the app (saved with every checkpoint)."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}

    def stage_list(self) -> list[str]:
        """Stages in run order; unknown names and a wrong order raise ConfigError."""
        names = [s.strip() for s in self.stages.split(",") if s.strip()]
        bad = [s for s in names if s not in STAGES]
        if bad or not names:
            raise ConfigError(f"run config: stages: {bad or 'empty'}; choose from {STAGES}")
        if names != sorted(names, key=STAGES.index) or len(set(names)) != len(names):
            raise ConfigError(f"run config: stages must be in the order {STAGES}, got {names}")
        return names

    def load(self) -> Config:
        """The training config with ``overrides`` applied and validated."""
        items = [item.strip() for item in self.overrides.split(";") if item.strip()]
        return load_config(self.config, items)

    def rounds(self, stage: str, cfg: Config) -> int:
        """Planned rounds of a training stage (run config wins over the YAML)."""
        own = int(getattr(self, f"rounds_{Stage.parse(stage).value}"))
        return own if own >= 0 else cfg.federation.rounds(Stage.parse(stage))


@dataclass(frozen=True)
class SiteSettings:
    """What one site needs to train: where its data and state live, and its privacy policy.

    In deployment every value comes from the SuperNode's node config. In simulation the node
    config only has ``partition-id``/``num-partitions``, so the cohort is the ``partition-id``-th
    folder (sorted) of the run's ``cohort-root`` and state goes under ``state-root``.
    """

    name: str
    cohort: Path
    state_dir: Path
    holdout_fraction: float | None = None
    device: str | None = None
    policy: SitePolicy = SitePolicy()

    @property
    def target_epsilon(self) -> float | None:
        return self.policy.target_epsilon

    @property
    def target_delta(self) -> float | None:
        return self.policy.target_delta

    @classmethod
    def resolve(
        cls, node_config: Mapping[str, ConfigValue], message_config: Mapping[str, Any]
    ) -> SiteSettings:
        """Combine node config with the simulation hints carried in the train message."""
        src = "node config"
        if "cohort" in node_config:
            cohort = Path(str(node_config["cohort"])).expanduser()
            name = str(node_config.get("site-name", cohort.name))
            default_state = cohort.parent / f".{cohort.name}-fedcmr4d-state"
            state_dir = Path(str(node_config.get("state-dir", default_state))).expanduser()
        else:
            cohort, name, state_dir = _simulated_site(node_config, message_config)

        def number(key: str) -> float | None:
            value = node_config.get(key)
            return None if value is None else float(_typed(src, key, value, float))

        return cls(
            name=name,
            cohort=cohort,
            state_dir=state_dir,
            holdout_fraction=number("holdout-fraction"),
            device=str(node_config["device"]) if "device" in node_config else None,
            policy=SitePolicy.from_node_config(node_config),
        )

    def apply(self, cfg: Config) -> Config:
        """The coordinator's config with this site's device, holdout fraction and budget.

        The budget (ε, δ) is always the site's when its policy sets it; every other privacy
        setting the coordinator sends is checked against the policy before training
        (:meth:`SitePolicy.check_plan`), not taken on trust.
        """
        tree = cfg.model_dump(mode="json")
        if self.holdout_fraction is not None:
            tree["data"]["holdout_fraction"] = self.holdout_fraction
        if self.device is not None:
            tree["train"]["device"] = self.device
        if self.target_epsilon is not None:
            tree["privacy"]["target_epsilon"] = self.target_epsilon
        if self.target_delta is not None:
            tree["privacy"]["target_delta"] = self.target_delta
        return config_from_dict(tree, f"node config of site {self.name}")


def _simulated_site(
    node_config: Mapping[str, ConfigValue], message_config: Mapping[str, Any]
) -> tuple[Path, str, Path]:
    if "partition-id" not in node_config:
        raise ConfigError(
            "node config: set cohort=<path to this site's cohort> (see sites/site.toml)"
        )
    root = str(message_config.get("cohort-root", ""))
    if not root:
        raise ConfigError("run config: cohort-root is required in simulation (one folder per site)")
    pid = int(node_config["partition-id"])
    folders = sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))
    if pid >= len(folders):
        raise ConfigError(
            f"{root}: site {pid} has no cohort folder ({len(folders)} folders for "
            f"{node_config.get('num-partitions')} simulated sites)"
        )
    cohort = folders[pid]
    state_root = str(message_config.get("state-root", "")) or str(Path(root).parent / "site-state")
    return cohort, cohort.name, Path(state_root) / cohort.name
