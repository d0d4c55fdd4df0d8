"""Run a whole consortium on this machine with Flower's Simulation Engine (in-process).

Used by ``fedcmr4d demo`` and the tests. The Simulation Engine gives each virtual SuperNode only
``partition-id``/``num-partitions`` as node config, so the sites' cohorts are the sorted folders
of ``settings.cohort_root`` and their state folders go under ``settings.state_root``. What a real
site's ``[node-config]`` would hold beyond that (its privacy policy above all) is passed per
site as ``node_configs`` and given to the ClientApp by a mod, as ``flower-supernode
--node-config`` would. Ray runs the ClientApps; it is started for the run and shut down
afterwards, so no daemon is left behind.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedcmr4d.errors import ConfigError
from fedcmr4d.federated.coordinator import Coordinator
from fedcmr4d.federated.server_app import Progress, make_server_app
from fedcmr4d.federated.settings import RunSettings
from fedcmr4d.federated.state import ServerState, load_snapshot

if TYPE_CHECKING:
    from flwr.clientapp import ClientApp

NodeConfigs = Mapping[int, Mapping[str, Any]]


def simulated_client_app(node_configs: NodeConfigs | None = None) -> ClientApp:
    """The site ClientApp with each simulated site's own node config (see module docstring).

    Args:
        node_configs: partition id -> node config items (e.g. the site's privacy policy).
    """
    from fedcmr4d.federated import client_app as production
    from fedcmr4d.federated.outbound import node_config_mod

    if not node_configs:
        return production.app
    return production.build_app([node_config_mod(node_configs)])


def simulation_backend(num_cpus: int = 1, total_cpus: int | None = None) -> dict[str, Any]:
    """Ray settings: ``num_cpus`` per ClientApp, at most ``total_cpus`` in all, no dashboard."""
    total = total_cpus or max(1, os.cpu_count() or 1)
    return {
        "client_resources": {"num_cpus": num_cpus, "num_gpus": 0.0},
        "init_args": {"num_cpus": total, "num_gpus": 0, "include_dashboard": False},
    }


def run_simulated_federation(
    settings: RunSettings,
    *,
    num_sites: int | None = None,
    progress: Progress | None = None,
    backend_config: dict[str, Any] | None = None,
    quiet: bool = True,
    node_configs: NodeConfigs | None = None,
    client_app: ClientApp | None = None,
    coordinator: type[Coordinator] = Coordinator,
) -> ServerState:
    """Run the planned stages over ``num_sites`` simulated sites and return the final state.

    Args:
        settings: run settings; ``cohort_root`` must hold one cohort folder per site.
        num_sites: simulated SuperNodes (default: one per folder in ``cohort_root``).
        progress: called with one line per round / stage.
        backend_config: Ray settings (default: :func:`simulation_backend`).
        quiet: turn Flower's own INFO logging down to warnings.
        node_configs: partition id -> that site's node config items (its privacy policy).
        client_app: the sites' app, used as given (default: the production ClientApp with
            ``node_configs``).
        coordinator: the round loop (default: :class:`Coordinator`).
    """
    os.environ["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silence a Ray notice
    # Ray runs its workers at niceness 15. In a simulation the ClientApps ARE the work: niced,
    # they starve behind any other busy process (one site's first round took 180 s instead of
    # 10 s on 2 cores beside two training jobs), so they run at the caller's priority.
    os.environ.setdefault("RAY_worker_niceness", "0")
    root = Path(settings.cohort_root)
    if not root.is_dir():
        raise ConfigError(f"{root}: cohort-root is not a folder (one cohort folder per site)")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    num_sites = num_sites or len(folders)
    if num_sites < 1 or num_sites > len(folders):
        raise ConfigError(f"{root}: {len(folders)} site folders for {num_sites} simulated sites")

    from flwr.simulation import run_simulation

    sites_app = client_app if client_app is not None else simulated_client_app(node_configs)
    flwr_logger = logging.getLogger("flwr")
    level, propagate = flwr_logger.level, flwr_logger.propagate
    known = _KnownNoticeFilter()
    if quiet:
        flwr_logger.setLevel(logging.WARNING)
        flwr_logger.propagate = False  # Ray adds a root handler: every line would print twice
        flwr_logger.addFilter(known)
    try:
        run_simulation(
            server_app=make_server_app(settings, progress, coordinator),
            client_app=sites_app,
            num_supernodes=num_sites,
            backend_config=backend_config or simulation_backend(),  # type: ignore[arg-type]
        )
    finally:
        flwr_logger.setLevel(level)
        flwr_logger.propagate = propagate
        flwr_logger.removeFilter(known)
        _shutdown_ray()
    snapshot = load_snapshot(Path(settings.out_dir))
    if snapshot is None:
        raise ConfigError(f"{settings.out_dir}: the simulation left no checkpoint")
    return snapshot.state


class _KnownNoticeFilter(logging.Filter):
    """Drops Flower notices that are expected here and would only alarm a user.

    The in-process ``run_simulation`` is deprecated in favour of ``flwr run`` (which starts a
    SuperLink daemon; see FIELD-NOTES), and our ServerApp runs its own evaluation, so Flower's
    "fraction_evaluate is set to 0.0" notice is expected too.
    """

    NOTICES = ("The `run_simulation` function is deprecated", "fraction_evaluate is set to 0.0")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(notice in message for notice in self.NOTICES)


def _shutdown_ray() -> None:
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except ImportError:
        pass
