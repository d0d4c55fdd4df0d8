"""A site's own privacy policy: the limits the coordinator's config must stay within.

The policy comes from the site's node config (``[node-config]`` of its site file; simulated
sites get theirs from what the simulation passes as node config), never from the coordinator.
Its key names are a contract (docs/privacy.md, sites/site.toml):

========================  ====================================================================
key                       meaning
========================  ====================================================================
``require-dp``            train only under DP-SGD (``privacy.enabled`` must be true)
``target-epsilon``        the site's ε budget (replaces the config's; required with require-dp)
``target-delta``          the site's δ (replaces the config's; default 1 / (10 N))
``min-noise-multiplier``  the smallest σ accepted (configured or derived from the budget)
``max-grad-norm``         the largest clip bound C accepted
``accountant``            the only accountant accepted (``rdp``, ``prv`` or ``gdp``)
``max-sample-rate``       the largest Poisson sample rate q = batch / N accepted
``max-local-steps``       the most local steps per round accepted
``max-rounds``            the most rounds per stage accepted (planned and actual)
========================  ====================================================================

A message that breaks the policy raises :class:`PolicyRefusal` before anything is trained or
spent; its text starts with ``site policy:`` and names the key, the asked value and the limit.
It is the only error text a site sends to the coordinator (see
:mod:`fedcmr4d.federated.outbound`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedcmr4d.config import Config
from fedcmr4d.errors import ConfigError

POLICY_KEYS = (
    "require-dp",
    "target-epsilon",
    "target-delta",
    "min-noise-multiplier",
    "max-grad-norm",
    "accountant",
    "max-sample-rate",
    "max-local-steps",
    "max-rounds",
)
ACCOUNTANTS = ("rdp", "prv", "gdp")
PREFIX = "site policy:"


class PolicyRefusal(ConfigError):
    """A message asks for something the site's policy does not allow (nothing was trained)."""


def refusal(key: str, asked: Any, limit: Any) -> PolicyRefusal:
    """The one-line refusal: ``site policy: <key>: asked <value>, limit <limit>``."""
    return PolicyRefusal(f"{PREFIX} {key}: asked {asked}, limit {limit}")


def _number(key: str, value: Any, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"node config: {key}: expected a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or (positive and number <= 0):
        raise ConfigError(f"node config: {key}: must be a finite number > 0, got {value!r}")
    return number


@dataclass(frozen=True)
class SitePolicy:
    """The limits a site sets in its node config (None: the site sets no limit there)."""

    require_dp: bool = False
    target_epsilon: float | None = None
    target_delta: float | None = None
    min_noise_multiplier: float | None = None
    max_grad_norm: float | None = None
    accountant: str | None = None
    max_sample_rate: float | None = None
    max_local_steps: int | None = None
    max_rounds: int | None = None

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> SitePolicy:
        """Read the policy keys of a node config; a bad value raises ConfigError naming it."""
        values: dict[str, Any] = {}
        if "require-dp" in node_config:
            flag = node_config["require-dp"]
            if isinstance(flag, str) and flag.lower() in ("true", "false"):
                flag = flag.lower() == "true"
            if not isinstance(flag, bool):
                raise ConfigError(f"node config: require-dp: expected true or false, got {flag!r}")
            values["require_dp"] = flag
        for key in ("target-epsilon", "min-noise-multiplier", "max-grad-norm", "max-sample-rate"):
            if key in node_config:
                values[key.replace("-", "_")] = _number(key, node_config[key])
        if "target-delta" in node_config:
            delta = _number("target-delta", node_config["target-delta"])
            if delta >= 1:
                raise ConfigError(f"node config: target-delta: must be in (0, 1), got {delta}")
            values["target_delta"] = delta
        if "max-sample-rate" in values and values["max_sample_rate"] > 1:
            raise ConfigError("node config: max-sample-rate: must be in (0, 1]")
        for key in ("max-local-steps", "max-rounds"):
            if key in node_config:
                value = node_config[key]
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ConfigError(
                        f"node config: {key}: expected an integer >= 1, got {value!r}"
                    )
                values[key.replace("-", "_")] = value
        if "accountant" in node_config:
            kind = str(node_config["accountant"])
            if kind not in ACCOUNTANTS:
                raise ConfigError(
                    f"node config: accountant: choose from {ACCOUNTANTS}, got {kind!r}"
                )
            values["accountant"] = kind
        policy = cls(**values)
        if policy.require_dp and policy.target_epsilon is None:
            raise ConfigError(
                "node config: require-dp = true needs this site's own target-epsilon "
                "(the budget must not come from the coordinator)"
            )
        return policy

    def dp_required(self, cfg: Config) -> bool:
        """Whether this site's training and evaluation replies fall under DP rules."""
        return self.require_dp or cfg.privacy.enabled

    def check_plan(
        self, cfg: Config, stage: str, *, rounds: Mapping[str, int], server_round: int
    ) -> None:
        """Refuse a message whose config breaks the policy (before any data is read).

        Args:
            cfg: the coordinator's config with the site's budget applied.
            stage: the stage to train.
            rounds: the coordinator's planned rounds per stage.
            server_round: the 1-based round this message asks for.

        Raises:
            PolicyRefusal: naming the first key broken, the asked value and the limit.
        """
        p = cfg.privacy
        if self.require_dp and not p.enabled:
            raise refusal("require-dp", "privacy.enabled=false", "privacy.enabled=true")
        steps = cfg.round_steps(stage)
        if self.max_local_steps is not None and steps > self.max_local_steps:
            raise refusal("max-local-steps", steps, self.max_local_steps)
        if self.max_rounds is not None:
            planned = max(int(rounds.get(stage, 1)), int(server_round))
            if planned > self.max_rounds:
                raise refusal("max-rounds", planned, self.max_rounds)
        if not p.enabled:
            return
        if self.max_grad_norm is not None and p.max_grad_norm > self.max_grad_norm:
            raise refusal("max-grad-norm", p.max_grad_norm, self.max_grad_norm)
        if self.accountant is not None and p.accountant != self.accountant:
            raise refusal("accountant", p.accountant, self.accountant)
        if p.noise_multiplier is not None:
            self.check_noise(float(p.noise_multiplier))

    def check_noise(self, sigma: float) -> None:
        """Refuse σ (configured, or derived from the budget) below ``min-noise-multiplier``."""
        if self.min_noise_multiplier is not None and sigma < self.min_noise_multiplier:
            raise refusal("min-noise-multiplier", f"{sigma:.4g}", self.min_noise_multiplier)

    def check_sample_rate(self, batch_size: int, n_subjects: int) -> None:
        """Refuse a Poisson sample rate q = batch / N above ``max-sample-rate``."""
        if self.max_sample_rate is None or n_subjects < 1:
            return
        rate = batch_size / n_subjects
        if rate > self.max_sample_rate:
            raise refusal("max-sample-rate", f"{rate:.4g}", self.max_sample_rate)
