"""Test-only apps that inject faults around the real ClientApp and Coordinator.

Production code carries no test hooks: these wrap the real handlers. The Simulation Engine ships
the ClientApp to Ray workers by pickling it; this module is registered to be pickled by value,
so a worker need not be able to import it.
"""

from __future__ import annotations

import sys

import numpy as np
import ray.cloudpickle
from flwr.app import ArrayRecord, Context, Message

from fedcmr4d.federated import client_app as production
from fedcmr4d.federated.coordinator import Coordinator
from fedcmr4d.federated.outbound import outbound_mod
from fedcmr4d.federated.state import ServerState

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

CORRUPTIONS = ("nan", "shape", "norm", "crash")


class SimulatedCrash(RuntimeError):
    """Raised by :class:`HaltingCoordinator`, as a crash would stop the run."""


def corrupt(weights: dict[str, np.ndarray], mode: str) -> dict[str, np.ndarray]:
    """Spoil an update as a faulty or hostile site might (``nan``, ``shape``, ``norm``)."""
    out = {k: v.copy() for k, v in weights.items()}
    first = next(iter(out))
    if mode == "nan":
        out[first].reshape(-1)[0] = np.nan
    elif mode == "shape":
        out[first] = out[first].reshape(-1)[:-1].copy()
    elif mode == "norm":
        out = {
            k: v + np.asarray(1e6, v.dtype) if v.dtype.kind == "f" else v for k, v in out.items()
        }
    return out


def faulty_client_app(modes: dict[int, str]):
    """The production ClientApp whose simulated site ``partition-id`` misbehaves per ``modes``.

    ``crash`` raises inside the handler (the outbound mod turns it into an error reply);
    ``nan``/``shape``/``norm`` spoil the weights of an otherwise real training reply.
    """
    from flwr.clientapp import ClientApp

    app = ClientApp(mods=[outbound_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        mode = modes.get(int(context.node_config["partition-id"]), "")  # type: ignore[arg-type]
        if mode == "crash":
            raise RuntimeError("simulated site failure at /secret/path/s0-000")
        reply = production.train(msg, context)
        if mode:
            record = reply.content.array_records["arrays"]
            weights = {k: v.numpy() for k, v in record.items()}
            reply.content["arrays"] = ArrayRecord(
                {k: _array(v) for k, v in corrupt(weights, mode).items()}
            )
        return reply

    app.evaluate()(production.evaluate)
    return app


def _array(value: np.ndarray):
    from flwr.app import Array

    return Array(np.ascontiguousarray(value))


def halting_coordinator(after_rounds: int) -> type[Coordinator]:
    """A Coordinator that stops (as a crash would) once ``after_rounds`` rounds are saved."""

    class Halting(Coordinator):
        def after_round(self, state: ServerState) -> None:
            if len(state.history) == after_rounds:
                raise SimulatedCrash(f"halting after {after_rounds} round(s), as a crash would")

    return Halting
