"""Localhost deployment with the repo's own scripts: the gate, TLS, SuperNode auth, pinned apps.

Starts ``server/start-superlink.sh`` (the SuperLink on loopback with TLS and
``--enable-supernode-auth``, the TLS gate on the sites' address), registers two sites' keys from
the coordinator's machine (loopback), starts their SuperNodes with ``sites/start-supernode.sh``
(each pinning the repo's app digest), and shows:

* an outsider holding only ``ca.crt`` and reaching the sites' address can neither
  ``flwr supernode register`` a key nor ``flwr run`` an app (the gate answers 403), and a
  SuperNode with an unregistered key is refused;
* the coordinator's own ``flwr run`` (loopback) trains with both registered sites;
* a copy of the app with one line changed is refused by both sites before any of it runs (the
  changed line would write a marker file; it does not exist) and the coordinator records the
  refusal;
* a SuperNode killed mid-round costs that round only its reply, and after a restart (TLS + auth)
  it takes part in the next round.

Only 127.0.0.1 and free ports; every wait is bounded; every process group is stopped in
``finally``.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import pytest

from fedcmr4d.federated.certs import make_all
from fedcmr4d.federated.coordinator import QUORUM_FAILED_FILE
from fedcmr4d.federated.pinning import app_digest, build_fab

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
        self.finished: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []

    def start(
        self, name: str, cmd: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        if name in self.running:
            self.finished.append(self.running.pop(name))
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.running[name] = (proc, log)
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def kill(self, name: str) -> None:
        """SIGKILL a process's whole group (the SuperNode, its runner, a ClientApp)."""
        proc, _ = self.running[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        every = [*self.running.values(), *self.finished]
        for proc, _ in every:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc, log in every:
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


def _site_file(
    path: Path, port: int, certs: Path, name: str, cohort: Path, runtime: int, pins: list[str]
) -> Path:
    path.write_text(
        f"""[supernode]
superlink = "127.0.0.1:{port}"
root-certificates = "{certs / "ca.crt"}"
auth-key = "{certs / "supernodes" / f"{name}.key"}"
runtime-port = {runtime}
app-digests = {json.dumps(pins)}

[node-config]
cohort = "{cohort}"
site-name = "{name}"
state-dir = "{path.parent / f"state-{name}"}"
device = "cpu"
"""
    )
    return path


def _flwr_config(home: Path, federations: dict[str, int], ca: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    text = f'[superlink]\ndefault = "{next(iter(federations))}"\n'
    for name, port in federations.items():
        text += f'\n[superlink.{name}]\naddress = "127.0.0.1:{port}"\nroot-certificates = "{ca}"\n'
    (home / "config.toml").write_text(text)


@dataclass
class Deployment:
    tmp: Path
    certs: Path
    gate_port: int
    superlink_port: int
    env: dict[str, str]
    procs: Processes
    sites: dict[str, Path]

    def flwr(
        self, *args: str | Path, home: str = "", timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "FLWR_HOME": home} if home else self.env
        return subprocess.run(
            [str(BIN / "flwr"), *map(str, args)],
            cwd=REPO,
            env=env,
            timeout=timeout,
            capture_output=True,
            text=True,
        )

    def start_site(self, name: str, **env: str) -> subprocess.Popen[bytes]:
        cmd = ["bash", "sites/start-supernode.sh", str(self.sites[name])]
        return self.procs.start(name, cmd, env)

    def run(
        self, app: Path, out: Path, extra: str = "", overrides: str = "", timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        run_config = (
            f'stages="autoencoder" evaluate=false out-dir="{out}" {extra} '
            f'overrides="federation.min_nodes=2;train.autoencoder.steps=1{overrides}"'
        )
        return self.flwr(
            "run", app, "coordinator", "--run-config", run_config, "--stream", timeout=timeout
        )


@contextmanager
def deployment(tmp_path: Path, cohorts: Path, site_names: dict[str, str]) -> Iterator[Deployment]:
    """SuperLink + gate started, ``site-a``/``site-b`` registered (not started)."""
    certs = make_all(tmp_path / "certs", ["127.0.0.1"], [*site_names, "rogue", "outsider"])
    gate_port, superlink_port = _free_port(), _free_port()
    _flwr_config(tmp_path / "flwr", {"coordinator": superlink_port}, certs / "ca.crt")
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO),
        "FLWR_HOME": str(tmp_path / "flwr"),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "CERTS": str(certs),
        "HOST": "127.0.0.1",
        "PORT": str(gate_port),
        "SUPERLINK_PORT": str(superlink_port),
        "DATABASE": str(tmp_path / "superlink.db"),
    }
    procs = Processes(env, tmp_path)
    pins = [app_digest(REPO)]
    sites = {
        name: _site_file(
            tmp_path / f"{name}.toml", gate_port, certs, name, cohorts / cohort, _free_port(), pins
        )
        for name, cohort in {**site_names, "rogue": next(iter(site_names.values()))}.items()
    }
    dep = Deployment(tmp_path, certs, gate_port, superlink_port, env, procs, sites)
    try:
        procs.start("superlink", ["bash", "server/start-superlink.sh"])
        _wait_for(
            lambda: _port_open(superlink_port) and _port_open(gate_port), 60, "SuperLink and gate"
        )
        for site in site_names:
            done = dep.flwr(
                "supernode", "register", certs / "supernodes" / f"{site}.pub", "coordinator"
            )
            assert done.returncode == 0, done.stdout + done.stderr
        yield dep
    finally:
        procs.stop_all()


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _modified_app(tmp: Path, marker: Path) -> Path:
    """The repo's bundle unpacked, with one line appended to the ClientApp module."""
    app = tmp / "modified-app"
    with zipfile.ZipFile(io.BytesIO(build_fab(REPO))) as archive:
        archive.extractall(app)
    client = app / "fedcmr4d" / "federated" / "client_app.py"
    client.write_text(client.read_text() + f"\nopen({str(marker)!r}, 'w').write('ran')\n")
    return app


@pytest.mark.slow
def test_gate_pinned_apps_and_a_site_killed_mid_round(
    tmp_path: Path, site_maker: Callable[..., Path]
) -> None:
    cohorts = site_maker(tmp_path, "AB", subjects=3)
    marker = tmp_path / "modified-app-ran"
    with deployment(tmp_path, cohorts, {"site-a": "site-0-A", "site-b": "site-1-B"}) as dep:
        for name in ("site-a", "site-b"):
            dep.start_site(name)
        dep.start_site("rogue", REJOIN_WAIT="0")  # refused at once, not retried

        # The outsider: only ca.crt, and the sites' address (the gate).
        outsider = tmp_path / "outsider-flwr"
        _flwr_config(outsider, {"outside": dep.gate_port}, dep.certs / "ca.crt")
        reg = dep.flwr(
            "supernode",
            "register",
            dep.certs / "supernodes" / "outsider.pub",
            "outside",
            home=str(outsider),
        )
        assert reg.returncode != 0, reg.stdout + reg.stderr
        run = dep.flwr(
            "run", ".", "outside", "--run-config", 'stages="autoencoder"', home=str(outsider)
        )
        assert run.returncode != 0 and "Successfully started run" not in run.stdout
        ctx = ssl.create_default_context(cafile=str(dep.certs / "ca.crt"))
        with httpx.Client(verify=ctx, timeout=10) as client:
            base = f"https://127.0.0.1:{dep.gate_port}"
            for path in (
                "/v1/control/list-runs",
                "/v1/control/start-run",
                "/docs",
                "/v1/fleet/../control/register-node",
                "/v1/fleet/%2e%2e/control/list-runs",
            ):
                assert client.post(base + path, content=b"").status_code == 403, path
            # ...while the Fleet API itself is reachable (and guarded by SuperNode auth).
            assert client.post(base + "/v1/fleet/get-run", content=b"").status_code != 403
        gate_log = dep.procs.log("superlink")
        assert "refused POST /v1/control/register-node" in gate_log
        assert "refused POST /v1/control/start-run" in gate_log
        nodes = dep.flwr("supernode", "list", "coordinator", "--format", "json")
        listed = json.loads(nodes.stdout)
        assert len(listed["nodes"]) == 2, nodes.stdout

        rogue = dep.procs.running["rogue"][0]
        _wait_for(lambda: rogue.poll() is not None, 90, "the unregistered SuperNode to give up")
        assert rogue.returncode != 0

        # The consortium's app, from the coordinator's loopback, 2 rounds. site-b is killed
        # (SIGKILL to its whole process group) as soon as it has taken its round-1 task, and
        # restarted at once: round 1 completes with site-a alone when round-timeout expires;
        # site-b, back under TLS + authentication, trains round 2 with site-a. (The SuperLink
        # keeps a vanished SuperNode online for up to 60 s, so the timeout is longer than that.)
        out = tmp_path / "coordinator"
        runner = subprocess.Popen(
            [
                str(BIN / "flwr"),
                "run",
                ".",
                "coordinator",
                "--run-config",
                f'stages="autoencoder" evaluate=false out-dir="{out}" rounds-autoencoder=2 '
                'round-timeout=100.0 overrides="federation.min_nodes=2;train.autoencoder.steps=1;'
                'federation.min_accepted=1"',  # the quorum holds with site-a alone
            ],
            cwd=REPO,
            env=dep.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            _wait_for(lambda: "installing it" in dep.procs.log("site-b"), 120, "site-b's task")
            dep.procs.kill("site-b")
            dep.start_site("site-b")
            _wait_for(lambda: (out / "autoencoder" / "meta.json").is_file(), 280, "round 2")
        finally:
            runner.kill()
            output = runner.communicate(timeout=10)[0]
        assert "Successfully started run" in output, output
        rows = _rows(out)
        assert [r["round"] for r in rows] == [1, 2]
        sites = [sorted(name.split(" ")[0] for name in r["accepted"]) for r in rows]
        # Round 1: site-a alone (site-b's reply never came, or came back as an error).
        # (site-b's lost task may come back as an error reply from the SuperLink: never accepted)
        assert sites[0] == ["site-a"], rows[0]
        assert all("site-a" not in r["site"] for r in rows[0]["rejected"]), rows[0]
        # Round 2: the restarted site-b trained (site-a too, unless these busy cores made its
        # reply later than round-timeout: that is not what this test is about).
        assert "site-b" in sites[1] and rows[1]["rejected"] == [], rows[1]
        assert "retrying in 5 s" in dep.procs.log("site-b")  # it did have to wait to rejoin

        # The same app with one line changed: refused at both sites, its code never ran.
        modified = _modified_app(tmp_path, marker)
        assert app_digest(modified) != app_digest(REPO)
        out_mod = tmp_path / "coordinator-modified"
        run = dep.run(modified, out_mod, "rounds-autoencoder=1")
        assert "Successfully started run" in run.stdout, run.stdout + run.stderr
        for site in ("site-a", "site-b"):
            _wait_for(
                lambda s=site: "site app pin: app bundle" in dep.procs.log(s),
                120,
                f"{site}'s refusal",
            )
        # No update accepted: below the quorum the round does not count and no checkpoint is
        # written; the coordinator keeps the round's record with both refusals.
        refused = out_mod / QUORUM_FAILED_FILE
        _wait_for(refused.is_file, 60, "the refused round's record")
        row = json.loads(refused.read_text())
        assert row["sites_accepted"] == 0 and len(row["rejected"]) == 2
        assert all("site app pin: app bundle sha256:" in r["reason"] for r in row["rejected"])
        assert not (out_mod / "autoencoder").exists() and not (out_mod / "metrics.jsonl").exists()
    assert not marker.exists(), "the modified app's code ran at a site"
    assert (tmp_path / "coordinator-modified").is_dir()
