"""Key material for a deployment: a CA, the SuperLink's TLS certificate, SuperNode auth keys.

Run as ``python -m fedcmr4d.federated.certs --out DIR --host superlink.example.org
--site hospital-a --site hospital-b`` (``server/make-certs.sh`` wraps it). Writes::

    DIR/ca.crt, DIR/ca.key            self-signed CA (keep ca.key offline; give ca.crt to sites)
    DIR/server.pem, DIR/server.key    SuperLink TLS certificate (SANs: every --host) and key
    DIR/supernodes/<site>.key/.pub    per-site EC P-384 key pair in OpenSSH format; the .key
                                      goes to that site only, the .pub is registered at the
                                      SuperLink (``flwr supernode register``)

Private keys are written with mode 0600. Existing files are never overwritten, so re-running
with a new ``--site`` adds that site's keys and leaves the CA alone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedcmr4d.errors import ConfigError, InputError

VALID_DAYS = 365


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


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


def make_server_cert(
    out: Path, hosts: Sequence[str], ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> Path:
    """``server.pem``/``server.key`` signed by the CA, valid for every name/IP in ``hosts``."""
    if not hosts:
        raise ConfigError("certs: give at least one --host (the SuperLink's name or IP)")
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
    _write(out / "server.key", _pem_key(key), private=True)
    _write(out / "server.pem", cert.public_bytes(serialization.Encoding.PEM))
    return out / "server.pem"


def make_supernode_keys(out: Path, site: str) -> tuple[Path, Path]:
    """An EC P-384 key pair in OpenSSH format for one SuperNode (kept if it exists)."""
    if not site or not all(c.isalnum() or c in "-_." for c in site):
        raise ConfigError(f"certs: site name {site!r}: use letters, digits, '-', '_' or '.'")
    private, public = out / "supernodes" / f"{site}.key", out / "supernodes" / f"{site}.pub"
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


def make_all(out: str | Path, hosts: Sequence[str], sites: Sequence[str]) -> Path:
    """CA (kept if present), a fresh server certificate, and keys for each site."""
    root = Path(out)
    ca, ca_key = make_ca(root)
    make_server_cert(root, hosts, ca, ca_key)
    for site in sites:
        make_supernode_keys(root, site)
    return root


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for the key material")
    parser.add_argument("--host", action="append", default=[], help="SuperLink DNS name or IP")
    parser.add_argument("--site", action="append", default=[], help="SuperNode (site) name")
    args = parser.parse_args(argv)
    root = make_all(args.out, args.host or ["127.0.0.1", "localhost"], args.site)
    print(f"wrote CA, server certificate and {len(args.site)} SuperNode key pair(s) to {root}")


if __name__ == "__main__":
    main()
