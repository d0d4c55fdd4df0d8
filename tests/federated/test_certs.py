"""Key material: private keys 0600 from the start, nothing overwritten silently."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography import x509

from fedcmr4d.errors import InputError
from fedcmr4d.federated import certs


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_keys_are_0600_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0o000)
    try:
        root = certs.make_all(tmp_path / "c", ["superlink.example.org"], ["site-a"])
    finally:
        os.umask(old)
    for key in ("ca.key", "server.key", "supernodes/site-a.key"):
        assert _mode(root / key) == 0o600, key
    for public in ("ca.crt", "server.pem", "supernodes/site-a.pub"):
        assert _mode(root / public) == 0o644, public
    assert not list(root.rglob("*.tmp")), "temporary files left behind"
    san = x509.load_pem_x509_certificate((root / "server.pem").read_bytes()).extensions
    names = san.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "superlink.example.org" in names.get_values_for_type(x509.DNSName)
    assert "localhost" in names.get_values_for_type(x509.DNSName)  # the SuperLink behind the gate


def test_a_leftover_world_readable_temp_file_does_not_make_a_readable_key(tmp_path: Path) -> None:
    root = tmp_path / "c"
    root.mkdir()
    # What the old code left behind: its fixed temporary name, world-readable.
    for name in (".server.key.tmp", ".ca.key.tmp"):
        (root / name).write_bytes(b"stale")
        (root / name).chmod(0o666)
    old = os.umask(0o000)
    try:
        certs.make_all(root, ["127.0.0.1"], [])
    finally:
        os.umask(old)
    assert _mode(root / "server.key") == 0o600
    assert _mode(root / "ca.key") == 0o600
    assert b"PRIVATE KEY" in (root / "server.key").read_bytes()


def test_write_refuses_an_existing_file_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "x.key"
    target.write_bytes(b"keep me")
    with pytest.raises(InputError, match="refusing to overwrite"):
        certs._write(target, b"new", private=True)
    assert target.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.key"]


def test_rerun_keeps_everything_and_renewal_says_what_it_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "c"
    certs.main(["--out", str(root), "--host", "127.0.0.1", "--site", "a"])
    first = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    capsys.readouterr()
    certs.main(["--out", str(root), "--host", "127.0.0.1", "--site", "a", "--site", "b"])
    out = capsys.readouterr().out
    assert all(p.read_bytes() == data for p, data in first.items()), "a file was overwritten"
    assert f"created  {root / 'supernodes' / 'b.key'}" in out
    assert f"kept     {root / 'server.key'}" in out and "REPLACED" not in out

    certs.main(["--out", str(root), "--host", "127.0.0.1", "--renew-server-cert"])
    out = capsys.readouterr().out
    assert f"REPLACED {root / 'server.key'}" in out and f"REPLACED {root / 'server.pem'}" in out
    assert (root / "server.key").read_bytes() != first[root / "server.key"]
    assert (root / "ca.key").read_bytes() == first[root / "ca.key"]
    assert _mode(root / "server.key") == 0o600


def test_half_a_pair_is_an_error_not_overwritten(tmp_path: Path) -> None:
    root = tmp_path / "c"
    certs.make_all(root, ["127.0.0.1"], ["a"])
    (root / "supernodes" / "a.pub").unlink()
    key = (root / "supernodes" / "a.key").read_bytes()
    with pytest.raises(InputError, match="a.key exists but .*a.pub does not"):
        certs.make_all(root, ["127.0.0.1"], ["a"])
    assert (root / "supernodes" / "a.key").read_bytes() == key
    (root / "ca.crt").unlink()
    with pytest.raises(InputError, match="ca.key exists but .*ca.crt does not"):
        certs.make_all(root, ["127.0.0.1"], [])
