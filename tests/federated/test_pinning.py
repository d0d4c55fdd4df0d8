"""App digests: reproducible, independent of compression, and checked before anything runs."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedcmr4d.cli import _register, app
from fedcmr4d.errors import ConfigError, InputError
from fedcmr4d.federated.pinning import (
    AppRefused,
    app_digest,
    build_fab,
    check_pinned,
    fab_digest,
    load_pins,
)

REPO = Path(__file__).resolve().parents[2]


def _rezip(fab: bytes, *, change: str | None = None, duplicate: bool = False) -> bytes:
    """The same members, stored uncompressed, in reverse order, with other dates."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(fab)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in reversed(src.infolist()):
            data = src.read(info)
            if info.filename == change:
                data += b"\n# one more line\n"
            dst.writestr(zipfile.ZipInfo(info.filename, date_time=(2001, 2, 3, 4, 5, 6)), data)
        if duplicate:
            dst.writestr("pyproject.toml", b"[project]\n")
    return out.getvalue()


@pytest.fixture(scope="module")
def fab() -> bytes:
    return build_fab(REPO)


def test_digest_is_of_content_not_of_zip_bytes(fab: bytes) -> None:
    digest = fab_digest(fab)
    assert digest.startswith("sha256:") and len(digest) == 7 + 64
    assert app_digest(REPO) == digest  # rebuilt: same
    assert fab_digest(_rezip(fab)) == digest  # other compression, order, dates: same
    changed = _rezip(fab, change="fedcmr4d/federated/client_app.py")
    assert fab_digest(changed) != digest
    with pytest.raises(InputError, match="duplicate"):
        fab_digest(_rezip(fab, duplicate=True))
    with pytest.raises(InputError, match="not a readable zip"):
        fab_digest(b"not a zip")


def test_check_pinned_refuses_what_is_not_listed(fab: bytes) -> None:
    digest = fab_digest(fab)
    assert check_pinned(fab, frozenset({digest})) == digest
    changed = _rezip(fab, change="fedcmr4d/federated/client_app.py")
    with pytest.raises(AppRefused, match=r"^site app pin: app bundle sha256:[0-9a-f]{64} is not"):
        check_pinned(changed, frozenset({digest}))
    with pytest.raises(AppRefused, match="^site app pin:"):
        check_pinned(b"garbage", frozenset({digest}))


def test_load_pins(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text('[supernode]\nsuperlink = "x:1"\n')
    with pytest.raises(ConfigError, match=r"app-digests is missing"):
        load_pins(site)
    site.write_text('[supernode]\napp-digests = ["sha256:abc"]\n')
    with pytest.raises(ConfigError, match="64 hex digits"):
        load_pins(site)
    good = "sha256:" + "ab" * 32
    site.write_text(f'[supernode]\napp-digests = ["{good}"]\n')
    assert load_pins(site) == {good}


def test_cli_prints_the_digest(fab: bytes) -> None:
    _register()
    result = CliRunner().invoke(app, ["app-digest", str(REPO)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == fab_digest(fab)
