"""Key material for a deployment: a CA, the SuperLink's TLS certificate, SuperNode auth keys.

Run as ``python -m fedcmr4d.federated.certs --out DIR --host superlink.example.org
--site hospital-a --site hospital-b`` (``server/make-certs.sh`` wraps it). Writes::

    DIR/ca.crt, DIR/ca.key            self-signed CA (keep ca.key offline; give ca.crt to sites)
    DIR/server.pem, DIR/server.key    SuperLink TLS certificate (SANs: every --host) and key
    DIR/supernodes/<site>.key/.pub    per-site EC P-384 key pair in OpenSSH format; the .key
                                      goes to that site only, the .pub is registered at the
                                      SuperLink (``flwr supernode register``)

Private keys are created 0600 from the start (``mkstemp``, ``O_EXCL``; see :func:`_write`).
Nothing is overwritten silently: re-running keeps the CA, the server certificate and existing
site keys (and says so), adds keys for new ``--site`` names, and replaces the server certificate
only with ``--renew-server-cert`` (printing which files it replaced). Half a pair (a ``.key``
without its ``.crt``/``.pub`` or the reverse) is an error, never completed by overwriting.

The server certificate always also names ``127.0.0.1`` and ``localhost``: the SuperLink listens
on loopback behind the gate (:mod:`fedcmr4d.federated.gate`), and the gate and the coordinator's
own ``flwr`` commands verify it there.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedcmr4d.errors import ConfigError, InputError

VALID_DAYS = 365


def _write(path: Path, data: bytes, private: bool = False, replace: bool = False) -> None:
    """Write ``data`` to ``path``: private files are 0600 from their first byte.

    The data goes to a fresh temporary file in the same folder (``mkstemp``: ``O_EXCL``, mode
    0600 whatever the umask), whose mode is then set explicitly (0600 private, 0644 public),
    flushed, and linked to ``path`` with ``os.link``, which fails if ``path`` exists: nothing is
    ever overwritten unless ``replace`` is given (then ``os.replace``, atomically). The temporary
    file is removed whatever happens, so a failure leaves neither a partial nor a readable key.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not replace:
        raise InputError(f"{path}: exists; refusing to overwrite it")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as handle:
            fd = -1
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise InputError(f"{path}: exists; refusing to overwrite it") from None
    finally:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedcmr4d consortium"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_ca(out: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Load ``ca.crt``/``ca.key`` from ``out`` or create them."""
    crt_path, key_path = out / "ca.crt", out / "ca.key"
    _whole_pair(crt_path, key_path)
    if crt_path.exists() and key_path.exists():
        try:
            cert = x509.load_pem_x509_certificate(crt_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        except ValueError as exc:
            raise InputError(f"{crt_path} / {key_path}: not a PEM CA pair ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InputError(f"{key_path}: expected an EC private key")
        return cert, key
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fedcmr4d consortium CA"))
        .issuer_name(_name("fedcmr4d consortium CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS * 5))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _pem_key(key), private=True)
    _write(crt_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _whole_pair(first: Path, second: Path) -> None:
    if first.exists() != second.exists():
        have, missing = (first, second) if first.exists() else (second, first)
        raise InputError(
            f"{have} exists but {missing} does not: refusing to create a new pair over half of "
            "an old one (move the leftover away, or restore its partner)"
        )


def make_server_cert(
    out: Path,
    hosts: Sequence[str],
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    renew: bool = False,
) -> list[Path]:
    """``server.pem``/``server.key`` signed by the CA, valid for ``hosts`` and loopback.

    Returns the files replaced (empty unless ``renew``); without ``renew`` an existing
    certificate is kept as it is.
    """
    if not hosts:
        raise ConfigError("certs: give at least one --host (the SuperLink's name or IP)")
    pem, key_path = out / "server.pem", out / "server.key"
    _whole_pair(pem, key_path)
    existing = [p for p in (key_path, pem) if p.exists()]
    if existing and not renew:
        return []
    hosts = list(dict.fromkeys([*hosts, "127.0.0.1", "localhost"]))
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(key_path, _pem_key(key), private=True, replace=renew)
    _write(pem, cert.public_bytes(serialization.Encoding.PEM), replace=renew)
    return existing


def make_supernode_keys(out: Path, site: str) -> tuple[Path, Path]:
    """An EC P-384 key pair in OpenSSH format for one SuperNode (kept if it exists)."""
    if not site or not all(c.isalnum() or c in "-_." for c in site):
        raise ConfigError(f"certs: site name {site!r}: use letters, digits, '-', '_' or '.'")
    private, public = out / "supernodes" / f"{site}.key", out / "supernodes" / f"{site}.pub"
    _whole_pair(private, public)
    if private.exists() and public.exists():
        return private, public
    key = ec.generate_private_key(ec.SECP384R1())
    _write(
        private,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
        private=True,
    )
    openssh = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    _write(public, openssh + f" {site}\n".encode())
    return private, public


def make_all(
    out: str | Path, hosts: Sequence[str], sites: Sequence[str], renew_server: bool = False
) -> Path:
    """CA, server certificate and site keys: each kept if present, created if not."""
    root = Path(out)
    ca, ca_key = make_ca(root)
    make_server_cert(root, hosts, ca, ca_key, renew=renew_server)
    for site in sites:
        make_supernode_keys(root, site)
    return root


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for the key material")
    parser.add_argument("--host", action="append", default=[], help="SuperLink DNS name or IP")
    parser.add_argument("--site", action="append", default=[], help="SuperNode (site) name")
    parser.add_argument(
        "--renew-server-cert",
        action="store_true",
        help="replace an existing server.pem/server.key (the CA and site keys are never replaced)",
    )
    args = parser.parse_args(argv)
    root = Path(args.out)
    hosts = args.host or ["127.0.0.1", "localhost"]
    before = {p for p in root.rglob("*") if p.is_file()} if root.is_dir() else set()
    ca, ca_key = make_ca(root)
    replaced = make_server_cert(root, hosts, ca, ca_key, renew=args.renew_server_cert)
    for site in args.site:
        make_supernode_keys(root, site)
    after = {p for p in root.rglob("*") if p.is_file()}
    for path in sorted(after - before):
        print(f"created  {path}")
    for path in replaced:
        print(f"REPLACED {path} (--renew-server-cert)")
    for path in sorted(before - set(replaced)):
        print(f"kept     {path}")


if __name__ == "__main__":
    main()
