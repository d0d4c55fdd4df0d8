"""Signed releases: build, refuse failed or stale audits, and detect every kind of tampering."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fedcmr4d.audit.memorization import run_audit
from fedcmr4d.data.cohort import open_cohort
from fedcmr4d.errors import AuditFailedError, ConfigError, InputError
from fedcmr4d.release.export import build_release
from fedcmr4d.release.manifest import MANIFEST_FILE, SIGNATURE_FILE, canonical_json
from fedcmr4d.release.sign import PASSPHRASE_ENV, generate_keypair, load_private_key, sign_bytes
from fedcmr4d.release.verify import verify_release

PASS = "steward-passphrase"


@pytest.fixture(scope="module")
def inputs(cohorts: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("release-inputs")
    synthetic = root / "synthetic"
    shutil.copytree(cohorts.fresh, synthetic)
    audit = run_audit(synthetic, [cohorts.train], [cohorts.holdout], root / "audit.json")
    assert audit["passed"], audit["reasons"]
    generate_keypair(root / "keys", PASS)
    generate_keypair(root / "other", PASS)
    build_release(synthetic, root / "audit.json", root / "keys" / "signing.key",
                  root / "release", passphrase=PASS)  # fmt: skip
    return {
        "root": root,
        "synthetic": synthetic,
        "audit": root / "audit.json",
        "key": root / "keys" / "signing.key",
        "pub": root / "keys" / "signing.pub",
        "other_key": root / "other" / "signing.key",
        "other_pub": root / "other" / "signing.pub",
        "release": root / "release",
    }


@pytest.fixture()
def release(inputs: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the built release that a test may tamper with."""
    return Path(shutil.copytree(inputs["release"], tmp_path / "release"))


def test_release_layout_and_verification(inputs: dict[str, Path], run_cli: Any):
    rel = inputs["release"]
    for name in ("audit.json", "audit.html", "provenance.json", "DATASHEET.md",
                 MANIFEST_FILE, SIGNATURE_FILE, "cohort/cohort.json"):  # fmt: skip
        assert (rel / name).is_file(), name
    assert (rel / "audit.json").read_bytes() == inputs["audit"].read_bytes()
    manifest_bytes = (rel / MANIFEST_FILE).read_bytes()
    manifest = json.loads(manifest_bytes)
    assert canonical_json(manifest) == manifest_bytes
    assert list(manifest["files"]) == sorted(manifest["files"])
    assert (
        MANIFEST_FILE not in manifest["files"]
        and "cohort/fresh000/cine.nii.gz" in manifest["files"]
    )
    provenance = json.loads((rel / "provenance.json").read_text())
    assert provenance["cohort"]["provenance"]["source"] == "phantom"
    assert provenance["audit"]["passed"] is True
    assert "Memorization audit" in (rel / "DATASHEET.md").read_text()
    assert not list(rel.parent.glob(".release.tmp-*"))
    assert verify_release(rel, inputs["pub"]).n_files == len(manifest["files"])
    code, text = run_cli("verify", rel, "--public-key", inputs["pub"])
    assert code == 0 and "valid" in text


def test_console_script_verifies_and_rejects(release: Path, inputs: dict[str, Path]):
    command = [sys.executable, "-m", "fedcmr4d", "verify", str(release), "--public-key"]
    ok = subprocess.run([*command, str(inputs["pub"])], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([*command, str(inputs["other_pub"])], capture_output=True, text=True)
    assert bad.returncode == 5 and SIGNATURE_FILE in bad.stderr


def _flip_byte(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _resign(release: Path, key_path: Path, edit: dict[str, Any] | None = None) -> None:
    manifest = json.loads((release / MANIFEST_FILE).read_bytes())
    manifest.update(edit or {})
    data = canonical_json(manifest)
    (release / MANIFEST_FILE).write_bytes(data)
    (release / SIGNATURE_FILE).write_bytes(sign_bytes(load_private_key(key_path, PASS), data))


def _tamper_nifti(release: Path, inputs: dict[str, Path]) -> str:
    _flip_byte(release / "cohort/fresh003/cine.nii.gz")
    return "cohort/fresh003/cine.nii.gz: SHA-256 differs"


def _tamper_add(release: Path, inputs: dict[str, Path]) -> str:
    (release / "cohort/fresh001/extra.txt").write_text("x")
    return "cohort/fresh001/extra.txt: not listed"


def _tamper_remove(release: Path, inputs: dict[str, Path]) -> str:
    (release / "cohort/fresh002/meta.json").unlink()
    return "cohort/fresh002/meta.json: listed in manifest.json but missing"


def _tamper_manifest(release: Path, inputs: dict[str, Path]) -> str:
    text = (release / MANIFEST_FILE).read_text().replace('"version":1', '"version":1 ')
    (release / MANIFEST_FILE).write_text(text)
    return "manifest.sig: not a valid signature of manifest.json"


def _tamper_other_key(release: Path, inputs: dict[str, Path]) -> str:
    _resign(release, inputs["other_key"])  # signer field still names the real key
    return "manifest.sig: not a valid signature of manifest.json"


def _tamper_other_key_and_signer(release: Path, inputs: dict[str, Path]) -> str:
    from fedcmr4d.release.sign import fingerprint

    other = fingerprint(load_private_key(inputs["other_key"], PASS).public_key())
    _resign(release, inputs["other_key"], {"signer": other})
    return "manifest.sig: release names signer " + other


@pytest.mark.parametrize(
    "tamper",
    [
        _tamper_nifti,
        _tamper_add,
        _tamper_remove,
        _tamper_manifest,
        _tamper_other_key,
        _tamper_other_key_and_signer,
    ],  # fmt: skip
    ids=[
        "nifti-byte",
        "file-added",
        "file-removed",
        "manifest-edited",
        "other-key",
        "other-key-and-signer",
    ],  # fmt: skip
)
def test_tampering_exits_5_naming_the_problem(
    tamper: Any, release: Path, inputs: dict[str, Path], run_cli: Any
):
    expected = tamper(release, inputs)
    code, text = run_cli("verify", release, "--public-key", inputs["pub"])
    assert code == 5, text
    assert expected in " ".join(text.split()), text


def test_wrong_public_key_exits_5(release: Path, inputs: dict[str, Path], run_cli: Any):
    code, text = run_cli("verify", release, "--public-key", inputs["other_pub"])
    assert code == 5 and "wrong public key" in " ".join(text.split())


def test_release_refused_when_the_audit_failed(
    cohorts: Any, inputs: dict[str, Path], run_cli: Any, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
):  # fmt: skip
    failed = run_audit(inputs["synthetic"], [inputs["synthetic"]], [cohorts.holdout],
                       tmp_path / "failed.json")  # fmt: skip
    assert failed["passed"] is False  # every synthetic subject is its own training copy
    monkeypatch.setenv(PASSPHRASE_ENV, PASS)
    code, text = run_cli("release", "--synthetic", inputs["synthetic"], "--audit",
                         tmp_path / "failed.json", "--key", inputs["key"], "--out",
                         tmp_path / "rel")  # fmt: skip
    assert code == 4 and "audit failed" in text
    assert not (tmp_path / "rel").exists()


@pytest.mark.parametrize("change", ["edit", "add", "remove"])
def test_release_refused_when_the_cohort_changed_after_the_audit(
    change: str, inputs: dict[str, Path], run_cli: Any, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
):  # fmt: skip
    synthetic = Path(shutil.copytree(inputs["synthetic"], tmp_path / "synthetic"))
    target = synthetic / "fresh004" / "meta.json"
    if change == "edit":
        target.write_text(target.read_text().replace("phantom", "phantom "))
    elif change == "add":
        target = synthetic / "fresh004" / "notes.txt"
        target.write_text("added later")
    else:
        target.unlink()
    monkeypatch.setenv(PASSPHRASE_ENV, PASS)
    code, text = run_cli("release", "--synthetic", synthetic, "--audit", inputs["audit"],
                         "--key", inputs["key"], "--out", tmp_path / "rel")  # fmt: skip
    assert code == 4 and str(target) in text
    assert not (tmp_path / "rel").exists()


def test_release_refuses_an_existing_out(inputs: dict[str, Path]):
    with pytest.raises(ConfigError, match="inside the cohort"):
        build_release(inputs["synthetic"], inputs["audit"], inputs["key"],
                      inputs["synthetic"] / "release", passphrase=PASS)  # fmt: skip
    with pytest.raises(ConfigError, match="already exists"):
        build_release(inputs["synthetic"], inputs["audit"], inputs["key"], inputs["release"],
                      passphrase=PASS)  # fmt: skip


def test_check_happens_before_any_output(inputs: dict[str, Path], tmp_path: Path):
    broken = tmp_path / "audit.json"
    audit = json.loads(inputs["audit"].read_text())
    audit["files"]["cohort.json"] = "0" * 64
    broken.write_text(json.dumps(audit))
    with pytest.raises(AuditFailedError, match="changed after the audit"):
        build_release(inputs["synthetic"], broken, inputs["key"], tmp_path / "rel",
                      passphrase=PASS)  # fmt: skip
    assert not any(p.name.startswith(".rel") for p in tmp_path.iterdir())


def _release_texts(release: Path) -> dict[str, str]:
    return {
        str(p.relative_to(release)): p.read_bytes().decode("utf-8", "replace")
        for p in release.rglob("*")
        if p.is_file() and not p.name.endswith(".nii.gz")
    }


def test_release_names_no_real_subject_no_path_and_no_real_distance(
    cohorts: Any, tmp_path: Path
):
    """Independent of the audit's own code: scan every text file of a built release."""
    synthetic = Path(shutil.copytree(cohorts.fresh, tmp_path / "synthetic"))
    index = json.loads((synthetic / "cohort.json").read_text())
    index["provenance"] = {
        "source": "synthetic",
        "checkpoint": "diffusion",
        "checkpoint_sha256": "ab" * 32,
        "seed": 3,
        "privacy": {
            "sites": {
                "site-A": {"autoencoder": {"epsilon": 4.5, "delta": 1e-5, "accountant": "rdp"},
                           "diffusion": {"epsilon": 7.25, "delta": 1e-5, "accountant": "rdp"}},
                "site-B": {"diffusion": {"epsilon": 6.5, "delta": 2e-5, "accountant": "prv"}},
            }
        },
    }  # fmt: skip
    (synthetic / "cohort.json").write_text(json.dumps(index))
    audit_path = tmp_path / "steward" / "audit.json"
    audit_path.parent.mkdir()
    run_audit(synthetic, [cohorts.train], [cohorts.holdout], audit_path)
    full = json.loads((audit_path.parent / "audit-full.json").read_text())
    generate_keypair(tmp_path / "keys", PASS)
    release = build_release(synthetic, audit_path, tmp_path / "keys" / "signing.key",
                            tmp_path / "release", passphrase=PASS)  # fmt: skip
    texts = _release_texts(release)
    assert "audit-full.json" not in texts and "audit.json" in texts
    real_ids = [*open_cohort(cohorts.train).subject_ids, *open_cohort(cohorts.holdout).subject_ids]
    detail = full["site_details"]["local"]
    distances = detail["holdout_to_train"] + detail["synthetic_to_train"]
    assert len(distances) == 40
    for name, text in texts.items():
        assert not [i for i in real_ids if i in text], name
        assert str(tmp_path) not in text and "/tmp" not in text, name
        strings = re.findall(r'"(/[^"]*)"', text)
        assert not strings, (name, strings)
        assert not [d for d in distances if repr(d) in text or f"{d:.6f}" in text], name
    provenance = json.loads(texts["provenance.json"])
    assert provenance["privacy"]["sites"]["site-B"]["diffusion"]["epsilon"] == 6.5
    sheet = texts["DATASHEET.md"]
    assert "| site-A | diffusion | 7.25 | 1e-05 | rdp |" in sheet
    assert "| site-B | diffusion | 6.5 | 2e-05 | prv |" in sheet


def test_release_refuses_a_full_audit_and_absolute_paths(cohorts: Any, tmp_path: Path):
    synthetic = Path(shutil.copytree(cohorts.fresh, tmp_path / "synthetic"))
    run_audit(synthetic, [cohorts.train], [cohorts.holdout], tmp_path / "audit.json")
    generate_keypair(tmp_path / "keys", PASS)
    key = tmp_path / "keys" / "signing.key"
    with pytest.raises(AuditFailedError, match="full audit"):
        build_release(synthetic, tmp_path / "audit-full.json", key, tmp_path / "r1",
                      passphrase=PASS)  # fmt: skip
    index = json.loads((synthetic / "cohort.json").read_text())
    index["provenance"] = {"checkpoint": str(tmp_path / "runs" / "diffusion")}
    (synthetic / "cohort.json").write_text(json.dumps(index))
    run_audit(synthetic, [cohorts.train], [cohorts.holdout], tmp_path / "audit2.json")
    with pytest.raises(InputError, match="paths of the sampling machine"):
        build_release(synthetic, tmp_path / "audit2.json", key, tmp_path / "r2",
                      passphrase=PASS)  # fmt: skip
