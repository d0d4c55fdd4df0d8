"""The TLS gate in front of the SuperLink: sites reach the Fleet API and nothing else.

Flower 1.42's SuperLink serves the Fleet API (SuperNodes), the Control API (``flwr run``,
``flwr supernode register``, ...) and the ServerApp runtime API over HTTP on one port, and the
open-source Control API has no authentication. So the deployment binds the SuperLink to
loopback and puts this gate on the address sites use. The gate

* presents the SuperLink's TLS certificate (``server.pem``/``server.key``) to sites;
* forwards a request only if it is ``POST`` to one of :data:`FLEET_PATHS` (the paths of Flower's
  ``FleetHttpClient``, compared exactly, after URL decoding, and forwarded as the constant from
  the list, never as the client's string), with its query string dropped;
* answers everything else ``403`` (Control API, runtime API, ``/docs``, ``/health``, ...) and
  logs the refusal;
* talks to the SuperLink on loopback over the SuperLink's own TLS, verifying it with the
  consortium CA (the SuperLink cannot run without TLS when SuperNode authentication is on, and
  the coordinator's own ``flwr`` commands and Flower's ServerApp runner use the same port).

SuperNode authentication is untouched: the signed headers pass through and the SuperLink checks
them. Run it as ``python -m fedcmr4d.federated.gate --listen 0.0.0.0:9093 --upstream
127.0.0.1:9091 --certs DIR`` (``server/start-superlink.sh`` does).
"""

from __future__ import annotations

import argparse
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from fedcmr4d.errors import ConfigError

log = logging.getLogger("fedcmr4d.gate")

#: The Fleet API as Flower 1.42's SuperNode calls it (flwr.supernode.fleet_http_client).
FLEET_PATHS: frozenset[str] = frozenset(
    "/v1/fleet/" + name
    for name in (
        "register-node",
        "activate-node",
        "deactivate-node",
        "unregister-node",
        "send-node-heartbeat",
        "pull-messages",
        "push-messages",
        "get-run",
        "get-fab",
        "push-object",
        "pull-object",
        "confirm-message-received",
    )
)

# Headers that describe one hop, not the request (RFC 9110 §7.6.1), plus the ones we set.
_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
    }
)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def allowed(method: str, path: str) -> str | None:
    """The upstream path for an allowed request, or None (the gate's whole policy)."""
    if method == "POST" and path in FLEET_PATHS:
        return next(p for p in FLEET_PATHS if p == path)
    return None


class FleetGate:
    """ASGI app: forward allowed Fleet API requests to the SuperLink, refuse the rest."""

    def __init__(self, upstream: str, ca_file: str | None, timeout: float = 300.0) -> None:
        verify: ssl.SSLContext | bool = False
        scheme = "http"
        if ca_file is not None:
            verify = ssl.create_default_context(cafile=ca_file)
            scheme = "https"
        self.base = f"{scheme}://{upstream}"
        self._verify = verify
        self._timeout = httpx.Timeout(timeout, connect=10.0)
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                verify=self._verify, timeout=self._timeout, follow_redirects=False
            )
        return self._client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if self._client is not None:
                        await self._client.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        client = scope.get("client") or ("?", 0)
        target = allowed(method, path)
        if target is None:
            log.warning("refused %s %s from %s:%s", method, path, client[0], client[1])
            await _plain(send, 403, f"fedcmr4d gate: {method} {path} is not served to sites\n")
            return
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP]

        async def body() -> AsyncIterator[bytes]:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                if chunk:
                    yield chunk
                if not message.get("more_body", False):
                    return

        request = self._http().build_request(
            "POST", self.base + target, headers=headers, content=body()
        )
        try:
            response = await self._http().send(request, stream=True)
        except httpx.HTTPError as exc:
            log.error("SuperLink unreachable for %s: %s", target, exc)
            await _plain(send, 502, "fedcmr4d gate: the SuperLink is unreachable\n")
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP],
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()


async def _plain(send: Send, status: int, text: str) -> None:
    data = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


def _host_port(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"gate: {what} {value!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT the sites connect to")
    parser.add_argument("--upstream", required=True, help="the SuperLink's loopback HOST:PORT")
    parser.add_argument("--certs", required=True, help="folder with ca.crt, server.pem, server.key")
    args = parser.parse_args(argv)
    host, port = _host_port(args.listen, "--listen")
    up_host, _ = _host_port(args.upstream, "--upstream")
    if up_host not in ("127.0.0.1", "::1", "localhost"):
        raise SystemExit(
            f"error: gate: --upstream {args.upstream}: the SuperLink must be on loopback"
        )
    certs = Path(args.certs)
    for name in ("ca.crt", "server.pem", "server.key"):
        if not (certs / name).is_file():
            raise SystemExit(f"error: gate: {certs / name} is missing (run server/make-certs.sh)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s fedcmr4d-gate %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    log.info("gate on %s: forwarding the Fleet API only to %s", args.listen, args.upstream)
    uvicorn.run(
        FleetGate(args.upstream, str(certs / "ca.crt")),
        host=host,
        port=port,
        ssl_certfile=str(certs / "server.pem"),
        ssl_keyfile=str(certs / "server.key"),
        log_level="warning",
        access_log=False,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
