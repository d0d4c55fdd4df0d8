"""Sites run only the app bundles they pinned: the digest, and the site's own ClientApp runner.

A run's app bundle (Flower's FAB, a zip that ``flwr run DIR`` builds from DIR) carries the
coordinator's copy of the project, and Flower's ``flwr-clientapp`` imports it ahead of anything
the site installed. So the check that decides whether a bundle may run cannot live in the bundle:
it lives here, in the fedcmr4d the site installed, and runs in processes the site starts.

**Digest.** :func:`fab_digest` hashes every member of the bundle (name and content, sorted by
name), not the zip bytes, so it does not depend on the zlib that compressed it: the same source
gives the same digest on every machine. :func:`app_digest` builds the bundle of a folder with
Flower's own builder (``flwr.cli.build.build_fab_from_disk``, the function ``flwr run`` calls:
same ``.gitignore`` and include/exclude rules), so ``fedcmr4d app-digest DIR`` prints the digest
of exactly what ``flwr run DIR`` submits.

**Where the check runs.** ``sites/start-supernode.sh`` starts ``flower-supernode --isolation
process`` (the SuperNode then launches nothing itself) and, beside it, ``python -m
fedcmr4d.federated.pinning superexec``: Flower's SuperExec loop with an executor of ours that
accepts ClientApp tasks only and starts each one as ``python -m fedcmr4d.federated.pinning
clientapp``. That runner is Flower's ``run_clientapp`` with one step guarded: the bundle's bytes,
pulled from the SuperNode, pass :func:`check_pinned` *before* they are unpacked, and a bundle
whose digest is not in the site file's ``[supernode] app-digests`` raises :class:`AppRefused`:
nothing of it is written to disk or imported, and Flower's own error path sends the coordinator a
reply whose reason starts with ``site app pin:``. Each task installs into a fresh, private
``FLWR_HOME``, so the ClientApp Flower loads can only be the bundle just checked. If the runner
is not running, no ClientApp runs at all (fail closed).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tomllib

from fedcmr4d.errors import ConfigError, InputError

log = logging.getLogger(__name__)

DIGEST_PREFIX = "sha256:"
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_DIGEST_DOMAIN = b"fedcmr4d app digest v1\n"


class AppRefused(RuntimeError):
    """A bundle whose digest the site did not pin (its text goes to the coordinator)."""


def fab_digest(fab: bytes) -> str:
    """``sha256:<hex>`` over every member of a FAB: ``name NUL sha256(content) LF``, sorted.

    Independent of compression and of zip metadata (dates, order). Duplicate member names are
    refused (an unzip would keep only one of them, so the digest would not say what runs).
    """
    try:
        with zipfile.ZipFile(io.BytesIO(fab)) as archive:
            infos = archive.infolist()
            names = [info.filename for info in infos]
            if len(set(names)) != len(names):
                raise InputError("app bundle: duplicate member names")
            lines = [
                f"{info.filename}\0{hashlib.sha256(archive.read(info)).hexdigest()}\n".encode()
                for info in sorted(infos, key=lambda info: info.filename)
            ]
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InputError(f"app bundle: not a readable zip ({exc})") from None
    return DIGEST_PREFIX + hashlib.sha256(_DIGEST_DOMAIN + b"".join(lines)).hexdigest()


def build_fab(app_dir: str | Path) -> bytes:
    """The bundle ``flwr run APP_DIR`` submits, built by Flower's own function."""
    from flwr.cli.build import build_fab_from_disk

    root = Path(app_dir)
    if not (root / "pyproject.toml").is_file():
        raise InputError(f"{root}: no pyproject.toml (not a Flower app folder)")
    try:
        return build_fab_from_disk(root)
    except ValueError as exc:
        raise InputError(f"{root}: Flower cannot build an app bundle from it ({exc})") from None


def app_digest(app_dir: str | Path) -> str:
    """Digest of the bundle that ``flwr run APP_DIR`` submits (see :func:`fab_digest`)."""
    return fab_digest(build_fab(app_dir))


def fab_members(fab: bytes) -> list[str]:
    """Member names of a bundle, sorted (what ``fedcmr4d app-digest --list`` prints)."""
    with zipfile.ZipFile(io.BytesIO(fab)) as archive:
        return sorted(archive.namelist())


def load_pins(site_file: str | Path) -> frozenset[str]:
    """``[supernode] app-digests`` of a site file; every entry must be ``sha256:<64 hex>``."""
    path = Path(site_file)
    try:
        with path.open("rb") as handle:
            site = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the site file ({exc})") from None
    supernode = site.get("supernode")
    if not isinstance(supernode, dict) or "app-digests" not in supernode:
        raise ConfigError(
            f"{path}: [supernode] app-digests is missing: list the digests of the app bundles "
            "this site agreed to run (fedcmr4d app-digest DIR prints one)"
        )
    pins = supernode["app-digests"]
    if not isinstance(pins, list) or not all(isinstance(p, str) for p in pins):
        raise ConfigError(f"{path}: [supernode] app-digests must be a list of strings")
    bad = [p for p in pins if not _DIGEST_RE.match(p)]
    if bad:
        raise ConfigError(
            f"{path}: [supernode] app-digests: {bad[0]!r} is not 'sha256:' and 64 hex digits"
        )
    return frozenset(pins)


def check_pinned(fab: bytes, pins: frozenset[str]) -> str:
    """Return the bundle's digest if the site pinned it, else raise :class:`AppRefused`."""
    try:
        digest = fab_digest(fab)
    except InputError as exc:
        raise AppRefused(f"site app pin: the app bundle is refused ({exc})") from None
    if digest not in pins:
        raise AppRefused(
            f"site app pin: app bundle {digest} is not among the {len(pins)} digest(s) in this "
            "site's [supernode] app-digests; nothing of it was installed or run"
        )
    return digest


# --- the site's ClientApp runner ----------------------------------------------------------


def _forget_fedcmr4d_modules() -> None:
    """Drop this process's fedcmr4d modules so the ClientApp imports the checked bundle's."""
    for name in [n for n in sys.modules if n == "fedcmr4d" or n.startswith("fedcmr4d.")]:
        del sys.modules[name]


def run_pinned_clientapp(argv: Sequence[str]) -> None:
    """Flower's ``flwr-clientapp`` with the bundle checked against the site's pins first."""
    import flwr.supernode.runtime.run_clientapp as flwr_runner
    from flwr.common.args import try_obtain_flwr_app_token
    from flwr.supercore.tls import validate_and_resolve_root_certificates
    from flwr.supernode.cli.flwr_clientapp import _parse_args_run_flwr_clientapp

    ours = argparse.ArgumentParser(add_help=False)
    ours.add_argument("--site-file", required=True)
    own, rest = ours.parse_known_args(argv)
    args = _parse_args_run_flwr_clientapp().parse_args(rest)
    token = try_obtain_flwr_app_token(args)
    site_file = own.site_file

    original_install = getattr(flwr_runner, "install_from_fab", None)
    if original_install is None or not callable(getattr(flwr_runner, "run_clientapp", None)):
        raise RuntimeError(
            "fedcmr4d pinning: flwr.supernode.runtime.run_clientapp has no install_from_fab / "
            "run_clientapp (a Flower other than 1.42?): refusing to run any ClientApp"
        )

    def guarded_install(fab_file: Any, *a: Any, **kw: Any) -> Path:
        if not isinstance(fab_file, bytes):
            raise AppRefused("site app pin: the app bundle did not arrive as bytes")
        try:
            pins = load_pins(site_file)
        except ConfigError as exc:
            log.error("%s", exc)
            raise AppRefused("site app pin: this site's pin list is unreadable") from None
        digest = check_pinned(fab_file, pins)
        log.info("app bundle %s is pinned by %s: installing it", digest, site_file)
        installed: Path = original_install(fab_file, *a, **kw)
        _forget_fedcmr4d_modules()
        return installed

    flwr_runner.install_from_fab = guarded_install  # type: ignore[assignment]
    # A private, empty Flower home per task: the only app Flower can load is the one just
    # checked and installed (never one left by an earlier run or another federation).
    home = tempfile.mkdtemp(prefix="fedcmr4d-clientapp-")
    os.environ["FLWR_HOME"] = home
    try:
        flwr_runner.run_clientapp(
            runtime_api_address=args.runtime_api_address,
            token=token,
            insecure=args.insecure,
            certificates=validate_and_resolve_root_certificates(
                args.root_certificates, args.insecure
            ),
            parent_pid=args.parent_pid,
            runtime_dependency_install=False,
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _pinned_executor_class(site_file: str) -> type:
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
    from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResult

    class PinnedClientAppExecutor(SubprocessExecutor):  # type: ignore[misc]
        """Accepts ClientApp tasks only and starts each in the site's pinned runner."""

        def get_eligible_capacity(
            self, supported_task_types: set[Any], **kw: Any
        ) -> tuple[set[Any], set[str]]:
            return {t for t in supported_task_types if t == TaskType.CLIENT_APP}, set()

        def launch(self, spec: ExecutionSpec) -> LaunchResult:
            if spec.task_type != TaskType.CLIENT_APP:
                return LaunchResult.failed(f"fedcmr4d site runs ClientApps only: {spec.task_type}")
            cmd = [
                sys.executable,
                "-m",
                "fedcmr4d.federated.pinning",
                "clientapp",
                "--site-file",
                site_file,
                "--runtime-api-address",
                spec.runtime_api_address,
                "--token",
                spec.token,
            ]
            if spec.insecure:
                cmd.append("--insecure")
            elif spec.root_certificates_path is not None:
                cmd += ["--root-certificates", spec.root_certificates_path]
            if spec.parent_pid is not None:
                cmd += ["--parent-pid", str(spec.parent_pid)]
            subprocess.Popen(cmd)  # noqa: S603 - our own module, fixed arguments
            return LaunchResult.accepted()

    return PinnedClientAppExecutor


def run_pinned_superexec(argv: Sequence[str]) -> None:
    """Flower's SuperExec loop for a SuperNode in ``--isolation process``, our executor inside."""
    import flwr.supercore.superexec.run_superexec as flwr_superexec

    parser = argparse.ArgumentParser(prog="python -m fedcmr4d.federated.pinning superexec")
    parser.add_argument("--site-file", required=True)
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--superexec-auth-secret-file", default=None)
    parser.add_argument("--parent-pid", type=int, default=None)
    args = parser.parse_args(argv)
    site_file = str(Path(args.site_file).resolve())
    pins = load_pins(site_file)  # refuse to start with a missing or malformed pin list
    log.info("site %s pins %d app bundle digest(s)", site_file, len(pins))
    secret = None
    if args.superexec_auth_secret_file:
        secret = Path(args.superexec_auth_secret_file).read_bytes()
    if not callable(getattr(flwr_superexec, "get_executor", None)):
        raise RuntimeError(
            "fedcmr4d pinning: flwr.supercore.superexec.run_superexec.get_executor is missing "
            "(a Flower other than 1.42?): refusing to start"
        )
    executor_class = _pinned_executor_class(site_file)
    flwr_superexec.get_executor = lambda *a, **kw: executor_class()  # type: ignore[assignment]
    flwr_superexec.run_superexec(
        runtime_api_address=args.runtime_api_address,
        insecure=True,  # the SuperNode's runtime API on this machine's loopback
        superexec_auth_secret=secret,
        parent_pid=args.parent_pid,
        runtime_dependency_install=False,
    )


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s fedcmr4d-pinning %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    if not argv or argv[0] not in ("superexec", "clientapp"):
        sys.exit("usage: python -m fedcmr4d.federated.pinning {superexec|clientapp} ...")
    try:
        if argv[0] == "superexec":
            run_pinned_superexec(argv[1:])
        else:
            run_pinned_clientapp(argv[1:])
    except (ConfigError, InputError) as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
