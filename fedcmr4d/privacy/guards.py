"""Model guards for DP training: nothing may carry site data into the weights unclipped.

Under DP-SGD only clipped, noised gradients may change what leaves a site. Two things break that
silently: normalisation layers with running statistics (BatchNorm, InstanceNorm with
``track_running_stats``) and any other buffer that ``forward`` writes from the batch (an EMA
codebook, for instance). :func:`check_dp_model` refuses both and names the layer; Opacus's
``ModuleValidator`` rules (per layer, with the layer's path) are applied as well, and
``fix=True`` lets Opacus replace what it knows how to replace (BatchNorm → GroupNorm).
"""

from __future__ import annotations

from collections.abc import Iterable

from opacus.validators import ModuleValidator
from torch import nn

from fedcmr4d.errors import ConfigError

_RUNNING_STAT_TYPES = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


def _layer(name: str) -> str:
    return name or "(root)"


def dp_model_problems(module: nn.Module, *, allowed_buffers: Iterable[str] = ()) -> list[str]:
    """Every reason ``module`` cannot be trained under DP, one line per layer.

    Args:
        module: the model about to be wrapped (train mode).
        allowed_buffers: dotted names of buffers known to be constants set at construction
            (e.g. a fixed sinusoidal table); every other buffer is refused.
    """
    problems: list[str] = []
    allowed = set(allowed_buffers)
    for name, sub in module.named_modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm):
            problems.append(
                f"layer '{_layer(name)}' ({type(sub).__name__}): batch statistics mix subjects "
                "and running statistics are written from data; use GroupNorm"
            )
        elif isinstance(sub, nn.modules.instancenorm._InstanceNorm) and sub.track_running_stats:
            problems.append(
                f"layer '{_layer(name)}' ({type(sub).__name__}): track_running_stats writes "
                "buffers from data; set track_running_stats=False or use GroupNorm"
            )
        else:
            validator = ModuleValidator.VALIDATORS.get(type(sub))
            for err in validator(sub) if validator is not None else []:
                problems.append(f"layer '{_layer(name)}' ({type(sub).__name__}): {err}")
    for buffer_name, _ in module.named_buffers():
        owner = buffer_name.rsplit(".", 1)[0] if "." in buffer_name else ""
        if buffer_name in allowed:
            continue
        if isinstance(module.get_submodule(owner), _RUNNING_STAT_TYPES):
            continue  # already reported above with the layer's type
        problems.append(
            f"buffer '{buffer_name}': buffers may be written from data outside the clipped "
            "gradient (e.g. an EMA codebook); make it an nn.Parameter trained by gradient, or "
            "a constant recomputed in forward"
        )
    return problems


def check_dp_model(
    module: nn.Module,
    *,
    name: str,
    allowed_buffers: Iterable[str] = (),
    fix: bool = False,
) -> nn.Module:
    """Return ``module`` if it is safe to train under DP, else raise naming each bad layer.

    Args:
        module: the model.
        name: what the model is (``generator``, ``discriminator``, ``unet``) for the message.
        allowed_buffers: constant buffers to accept (see :func:`dp_model_problems`).
        fix: let Opacus's ``ModuleValidator.fix`` replace layers it can (BatchNorm → GroupNorm)
            first. This changes the architecture, so federated sites must all agree on it.

    Raises:
        ConfigError: one line per problem, each naming the layer or buffer.
    """
    if fix:
        module = ModuleValidator.fix(module)
    problems = dp_model_problems(module, allowed_buffers=allowed_buffers)
    if problems:
        raise ConfigError(
            f"privacy.enabled: the {name} cannot be trained under DP-SGD:\n  "
            + "\n  ".join(problems)
        )
    return module
