"""The gate's path policy, against Flower's own Fleet client and Control router."""

from __future__ import annotations

import asyncio
import inspect
import re

import httpx
import pytest

from fedcmr4d.federated.gate import FLEET_PATHS, FleetGate, allowed


def test_fleet_paths_are_exactly_what_flowers_supernode_calls() -> None:
    import flwr.supernode.fleet_http_client as fleet_client

    called = set(re.findall(r'path="(/v1/fleet/[a-z-]+)"', inspect.getsource(fleet_client)))
    assert called == FLEET_PATHS


def test_no_control_or_runtime_route_is_allowed() -> None:
    from flwr.superlink.main import create_app, iter_route_contexts

    routes = {getattr(c.route, "path", "") for c in iter_route_contexts(create_app().routes)}
    control = {p for p in routes if p.startswith("/v1/control/")}
    assert {"/v1/control/start-run", "/v1/control/register-node"} <= control
    for path in routes - FLEET_PATHS:
        assert allowed("POST", path) is None, path
    for path in FLEET_PATHS:
        assert path in routes  # the SuperLink serves each one
        assert allowed("POST", path) == path
        assert allowed("GET", path) is None
    for trick in (
        "/v1/fleet/../control/start-run",
        "/v1/fleet/get-run/",
        "/V1/fleet/get-run",
        "/v1/fleet/get-run;x",
        "//v1/fleet/get-run",
    ):
        assert allowed("POST", trick) is None, trick


@pytest.mark.parametrize(
    ("path", "status"),
    [("/v1/control/start-run", 403), ("/docs", 403), ("/v1/fleet/get-run", 502)],
)
def test_gate_answers(path: str, status: int) -> None:
    # Upstream: a closed loopback port, so an allowed request fails at the SuperLink (502).
    gate = FleetGate("127.0.0.1:9", ca_file=None, timeout=5.0)

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=gate)
        async with httpx.AsyncClient(transport=transport, base_url="http://gate") as client:
            return await client.post(path, content=b"x")

    response = asyncio.run(call())
    assert response.status_code == status
    if status == 403:
        assert "not served to sites" in response.text
