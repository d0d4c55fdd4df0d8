"""Localhost deployment with the repo's own scripts: TLS, SuperNode authentication, one round.

Starts ``server/start-superlink.sh`` (TLS + ``--enable-supernode-auth``), registers two sites'
keys with ``flwr supernode register``, starts their SuperNodes with ``sites/start-supernode.sh``,
checks that a SuperNode with an unregistered key is refused, then runs one stage-1 round with
``flwr run``. Only 127.0.0.1 and free ports; every wait is bounded; every process group is
stopped in ``finally``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

from fedcmr4d.federated.certs import make_all

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Processes:
    """Background processes, each in its own session, stopped together."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.running: dict[str, tuple[subprocess.Popen[bytes], IO[bytes]]] = {}

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.running[name] = (proc, log)
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc, _ in self.running.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc, log in self.running.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:  # children (ClientApp / ServerApp processes) share the session's group
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
            log.close()


def _site_file(path: Path, port: int, certs: Path, name: str, cohort: Path, runtime: int) -> Path:
    path.write_text(
        f"""[supernode]
superlink = "127.0.0.1:{port}"
root-certificates = "{certs / "ca.crt"}"
auth-key = "{certs / "supernodes" / f"{name}.key"}"
runtime-port = {runtime}

[node-config]
cohort = "{cohort}"
site-name = "{name}"
state-dir = "{path.parent / f"state-{name}"}"
device = "cpu"
"""
    )
    return path


@pytest.mark.slow
def test_tls_authenticated_deployment_one_round(
    tmp_path: Path, site_maker: Callable[..., Path]
) -> None:
    certs = make_all(tmp_path / "certs", ["127.0.0.1", "localhost"], ["site-a", "site-b", "rogue"])
    cohorts = site_maker(tmp_path, "AB", subjects=3)
    port = _free_port()
    flwr_home = tmp_path / "flwr"
    flwr_home.mkdir()
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{port}"\n'
        f'root-certificates = "{certs / "ca.crt"}"\n'
    )
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "CERTS": str(certs),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "DATABASE": str(tmp_path / "superlink.db"),
    }
    procs = Processes(env, tmp_path)
    out = tmp_path / "coordinator"
    try:
        procs.start("superlink", ["bash", "server/start-superlink.sh"])
        _wait_for(lambda: _port_open(port), 60, "the SuperLink port")
        for site in ("site-a", "site-b"):
            subprocess.run(
                [
                    BIN / "flwr",
                    "supernode",
                    "register",
                    certs / "supernodes" / f"{site}.pub",
                    "test",
                ],
                cwd=REPO,
                env=env,
                check=True,
                timeout=60,
                capture_output=True,
            )
        sites = {
            "site-a": cohorts / "site-0-A",
            "site-b": cohorts / "site-1-B",
            "rogue": cohorts / "site-0-A",
        }
        for name, cohort in sites.items():
            site_file = _site_file(
                tmp_path / f"{name}.toml", port, certs, name, cohort, _free_port()
            )
            procs.start(name, ["bash", "sites/start-supernode.sh", str(site_file)])

        rogue = procs.running["rogue"][0]
        _wait_for(lambda: rogue.poll() is not None, 90, "the unregistered SuperNode to give up")
        assert rogue.returncode != 0
        assert "No SuperNode found with the given public key" in procs.log("superlink")

        run_config = (
            f'stages="autoencoder" rounds-autoencoder=1 evaluate=false out-dir="{out}" '
            'overrides="federation.min_nodes=2;train.autoencoder.steps=1"'
        )
        run = subprocess.run(
            [BIN / "flwr", "run", ".", "test", "--run-config", run_config, "--stream"],
            cwd=REPO,
            env=env,
            timeout=400,
            capture_output=True,
            text=True,
        )
        assert "Successfully started run" in run.stdout, run.stdout + run.stderr
        _wait_for(lambda: (out / "autoencoder" / "meta.json").is_file(), 120, "the checkpoint")
    finally:
        procs.stop_all()

    (row,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert row["sites_accepted"] == 2 and row["rejected"] == []
    assert sorted(name.split(" ")[0] for name in row["accepted"]) == ["site-a", "site-b"]
    assert row["bytes_from_sites"] == 2 * row["model_bytes"] > 0
