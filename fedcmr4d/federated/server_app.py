"""Flower ServerApp: the coordinator's app, and nothing else.

``flwr run`` starts :data:`app`, which reads the run config once (see
:mod:`fedcmr4d.federated.settings`) and runs the stages with
:class:`~fedcmr4d.federated.coordinator.Coordinator`. The pieces live in their own modules:
what each message carries (:mod:`~fedcmr4d.federated.messages`), the screening of replies
(:mod:`~fedcmr4d.federated.screening`, :mod:`~fedcmr4d.federated.validation`), the round loop
(:mod:`~fedcmr4d.federated.coordinator`) and the stage checkpoint
(:mod:`~fedcmr4d.federated.stage_checkpoint`).
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedcmr4d.federated.coordinator import Coordinator, Progress
from fedcmr4d.federated.settings import RunSettings
from fedcmr4d.federated.stage_checkpoint import save_stage_checkpoint

__all__ = ["Progress", "app", "main", "make_server_app", "save_stage_checkpoint"]


def make_server_app(
    settings: RunSettings,
    progress: Progress | None = None,
    coordinator: type[Coordinator] = Coordinator,
) -> ServerApp:
    """A ServerApp bound to fixed settings (the Simulation Engine passes no run config).

    Args:
        coordinator: the round loop to run (a subclass of :class:`Coordinator`).
    """
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        coordinator(grid, settings, progress).run()

    return server


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point for ``flwr run``: read the run config once, typed, then run the stages."""
    settings = RunSettings.from_run_config(dict(context.run_config))
    Coordinator(grid, settings).run()
