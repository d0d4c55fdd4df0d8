"""The ClientApp's memory release: a site process hands freed heap back after every message."""
# Messages need the identity a Flower runtime gives its process (conftest's flower_identity).

from __future__ import annotations

import sys

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from fedcmr4d.federated import client_app
from fedcmr4d.federated.memory import release_memory, release_memory_mod


def _context() -> Context:
    return Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})


def _message() -> Message:
    content = RecordDict({"c": ConfigRecord({"x": 1})})
    return Message(content, dst_node_id=7, message_type=MessageType.QUERY)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_release_memory_trims_the_heap_on_linux() -> None:
    assert release_memory() is True


@pytest.mark.usefixtures("flower_identity")
def test_the_mod_returns_the_handlers_reply_unchanged_and_releases_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(
        "fedcmr4d.federated.memory.release_memory", lambda: calls.append("release") or True
    )
    msg = _message()
    reply = Message(RecordDict({"r": ConfigRecord({"y": 2})}), reply_to=msg)

    def handler(m: Message, c: Context) -> Message:
        calls.append("handler")
        return reply

    assert release_memory_mod(msg, _context(), handler) is reply
    assert calls == ["handler", "release"]


@pytest.mark.usefixtures("flower_identity")
def test_the_mod_releases_also_when_the_handler_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(
        "fedcmr4d.federated.memory.release_memory", lambda: calls.append("release") or True
    )

    def failing(m: Message, c: Context) -> Message:
        raise RuntimeError("site failed")

    with pytest.raises(RuntimeError, match="site failed"):
        release_memory_mod(_message(), _context(), failing)
    assert calls == ["release"]


def test_the_installed_clientapps_carry_the_mod_outside_the_outbound_filter() -> None:
    for app in (client_app.app, client_app.build_app([])):
        names = [m.__name__ for m in app._mods]
        assert names.index("release_memory_mod") < names.index("outbound_mod"), names
