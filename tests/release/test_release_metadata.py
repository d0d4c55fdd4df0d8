"""What a recipient gets beside the images: croissant.json (Croissant 1.1), verification with
standard tools only (OpenSSL, sha256sum), and an nnU-Net v2 export. All on a real release built by
:func:`~fedcmr4d.release.export.build_release` from an audited phantom cohort."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from fedcmr4d.audit.memorization import run_audit
from fedcmr4d.data.cohort import LABEL_UNLABELLED, open_cohort, write_subject
from fedcmr4d.data.phantom import write_phantom_cohort
from fedcmr4d.errors import ConfigError
from fedcmr4d.io import sha256_file
from fedcmr4d.release.croissant import CONFORMS_TO, CROISSANT_FILE, SUBJECT_FIELDS
from fedcmr4d.release.export import build_release
from fedcmr4d.release.nnunet import export_nnunet
from fedcmr4d.release.sign import generate_keypair

KW = {"image_size": 32, "slices": 6, "frames": 16}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("metadata")
    write_phantom_cohort(root / "train", 12, 201, id_prefix="train", **KW)
    write_phantom_cohort(root / "holdout", 8, 202, id_prefix="hold", **KW)
    write_phantom_cohort(root / "synthetic", 3, 203, id_prefix="syn", **KW)
    audit = run_audit(root / "synthetic", [root / "train"], [root / "holdout"], root / "audit.json")
    assert audit["passed"], audit.get("reasons")
    generate_keypair(root / "keys", None, allow_unencrypted=True)
    build_release(root / "synthetic", root / "audit.json", root / "keys" / "signing.key",
                  root / "release")  # fmt: skip
    return {"root": root, "release": root / "release", "pub": root / "keys" / "signing.pub"}


@pytest.fixture()
def release(built: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(built["release"], tmp_path / "release"))


# --------------------------------------------------------------------------------- Croissant
def test_croissant_lists_files_subjects_and_rai_fields(built: dict[str, Path]) -> None:
    rel = built["release"]
    doc = json.loads((rel / CROISSANT_FILE).read_text())
    manifest = json.loads((rel / "manifest.json").read_text())
    assert CROISSANT_FILE in manifest["files"]  # signed with the rest
    assert doc["@type"] == "sc:Dataset" and doc["conformsTo"] == CONFORMS_TO
    assert doc["license"].startswith("https://")
    files = {f["contentUrl"]: f for f in doc["distribution"]}
    assert set(files) == set(manifest["files"]) - {CROISSANT_FILE}
    for rel_path, entry in files.items():
        assert entry["@type"] == "cr:FileObject" and entry["sha256"] == sha256_file(rel / rel_path)
    (subjects,) = doc["recordSet"]
    assert [f["name"] for f in subjects["field"]] == [name for name, _, _ in SUBJECT_FIELDS]
    cohort = open_cohort(rel / "cohort")
    records = {r["subjects/subject_id"]: r for r in subjects["data"]}
    assert sorted(records) == cohort.subject_ids
    for subject_id, record in records.items():
        meta = cohort.load(subject_id, with_labels=False).meta
        assert record["subjects/cine"] == f"cohort/{subject_id}/cine.nii.gz"
        assert record["subjects/cine"] in files and record["subjects/labels"] in files
        assert (record["subjects/ed_frame"], record["subjects/es_frame"]) == (
            meta["ed_frame"],
            meta["es_frame"],
        )
        assert record["subjects/frames"] == 16 and record["subjects/spacing_z_mm"] == 10.0
    assert doc["rai:hasSyntheticData"] is True and "Synthetic data" in doc["rai:dataCollectionType"]
    assert "latent diffusion" in doc["rai:dataCollection"]
    assert json.loads(doc["fedcmr4d:audit"])["passed"] is True
    assert "audit" in doc["rai:personalSensitiveInformation"][0]


def test_croissant_carries_epsilon_per_site(built: dict[str, Path], tmp_path: Path) -> None:
    from fedcmr4d.release.croissant import build_croissant

    sites = {"site-0-A": {"epsilon": 3.5, "delta": 1e-5, "accountant": "rdp"}}
    provenance = json.loads((built["release"] / "provenance.json").read_text())
    provenance["privacy"] = {"sites": sites}
    audit = json.loads((built["release"] / "audit.json").read_text())
    doc = build_croissant(built["release"], provenance, audit)
    assert json.loads(doc["fedcmr4d:privacy"]) == sites
    assert "3.5" in doc["rai:personalSensitiveInformation"][0]


def test_croissant_is_valid_for_mlcroissant(built: dict[str, Path]) -> None:
    # A dev dependency, not skipped when absent: a validator that silently does not run would
    # let an invalid croissant.json land.
    import mlcroissant as mlc

    dataset = mlc.Dataset(jsonld=str(built["release"] / CROISSANT_FILE))
    issues = dataset.metadata.ctx.issues
    assert not issues.errors and not issues.warnings, issues.report()
    records = list(dataset.records("subjects"))
    assert len(records) == 3 and records[0]["subjects/frames"] == 16


# ------------------------------------------------------- verify with standard tools (steward.md)
OPENSSL = (
    "openssl pkeyutl -verify -pubin -inkey {pub} -rawin -in manifest.json -sigfile manifest.sig"
)
SHA_LIST = (
    'python3 -c \'import json; [print(f"{h}  {p}") for p, h in '
    'json.load(open("manifest.json"))["files"].items()]\' | sha256sum --strict -c -'
)
SAME_FILES = (
    "diff <(find . -type f ! -name manifest.json ! -name manifest.sig | sed 's|^\\./||' "
    '| LC_ALL=C sort) <(python3 -c \'import json; print(*sorted(json.load(open("manifest.json"))'
    '["files"]), sep=chr(10))\')'
)


def _steward_commands(pub: Path) -> list[str]:
    """The three commands of docs/steward.md, section "Without fedcmr4d", as written there."""
    text = (Path(__file__).parents[2] / "docs" / "steward.md").read_text()
    block = text.split("### Without fedcmr4d", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [ln for ln in block.strip().splitlines() if ln and not ln.startswith("#")]
    assert lines == [OPENSSL.format(pub="../signing.pub"), SHA_LIST, SAME_FILES]
    return [OPENSSL.format(pub=pub), SHA_LIST, SAME_FILES]


def _run(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=60
    )


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_standard_tools_verify_and_reject(built: dict[str, Path], release: Path) -> None:
    commands = _steward_commands(built["pub"])
    for command in commands:
        done = _run(command, release)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
    assert "Signature Verified Successfully" in _run(commands[0], release).stdout

    cine = release / "cohort" / "syn000" / "cine.nii.gz"
    data = bytearray(cine.read_bytes())
    data[100] ^= 1
    cine.write_bytes(bytes(data))  # a changed file: the signature holds, the hash list fails
    assert _run(commands[0], release).returncode == 0
    failed = _run(commands[1], release)
    assert failed.returncode != 0 and "cohort/syn000/cine.nii.gz: FAILED" in failed.stdout

    (release / "extra.txt").write_text("added")  # an added file: only the file list sees it
    assert _run(commands[2], release).returncode != 0
    manifest = release / "manifest.json"
    manifest.write_bytes(manifest.read_bytes().replace(b'"sha256"', b'"sha256 "'))
    assert _run(commands[0], release).returncode != 0  # an edited manifest: the signature fails


# ------------------------------------------------------------------------------- nnU-Net v2
def _partly_labelled(root: Path, release: Path) -> Path:
    """The release's cohort with syn001 labelled at ED/ES only (one ES voxel unlabelled) and
    syn002 without labels."""
    cohort = root / "cohort"
    shutil.copytree(release / "cohort", cohort)
    source = open_cohort(cohort)
    one = source.load("syn001")
    assert one.labels is not None
    keep = {one.meta["ed_frame"], one.meta["es_frame"]}
    for t in range(one.labels.shape[3]):
        if t not in keep:
            one.labels[..., t] = LABEL_UNLABELLED
    one.labels[0, 0, 0, one.meta["es_frame"]] = LABEL_UNLABELLED
    shutil.rmtree(cohort / "syn001")
    write_subject(cohort, one)
    (cohort / "syn002" / "labels.nii.gz").unlink()
    return cohort


def _check_nnunet_dataset(out: Path) -> dict[str, Any]:
    """The checks of nnU-Net v2's dataset_format.md (and what its integrity check tests)."""
    dataset = json.loads((out / "dataset.json").read_text())
    assert {"channel_names", "labels", "numTraining", "file_ending"} <= dataset.keys()
    assert dataset["file_ending"] == ".nii.gz" and dataset["channel_names"] == {"0": "cineMRI"}
    values = sorted(v for k, v in dataset["labels"].items() if k != "ignore")
    assert dataset["labels"]["background"] == 0 and values == list(range(len(values)))
    if "ignore" in dataset["labels"]:
        assert dataset["labels"]["ignore"] == max(dataset["labels"].values())
    cases = sorted(p.name[: -len(".nii.gz")] for p in (out / "labelsTr").iterdir())
    assert len(cases) == dataset["numTraining"]
    channels = sorted(p.name for p in (out / "imagesTr").iterdir())
    assert channels == [f"{c}_0000.nii.gz" for c in cases]  # every case has its one channel
    for case in cases:
        image = nib.load(str(out / "imagesTr" / f"{case}_0000.nii.gz"))
        seg = nib.load(str(out / "labelsTr" / f"{case}.nii.gz"))
        assert image.shape == seg.shape and len(image.shape) == 3
        assert np.allclose(image.affine, seg.affine)
        assert np.allclose(image.header.get_zooms(), seg.header.get_zooms())
        labels = np.unique(np.asarray(seg.dataobj))
        assert set(labels.tolist()) <= set(dataset["labels"].values())
        assert np.isfinite(np.asarray(image.dataobj)).all()
    return dataset


def test_nnunet_export_follows_the_v2_layout(
    built: dict[str, Path], tmp_path: Path, run_cli: Any
) -> None:
    cohort = _partly_labelled(tmp_path, built["release"])
    out = tmp_path / "Dataset501_SynthCine"
    code, text = run_cli("export", "--format", "nnunet", cohort, "--out", out)
    assert code == 0, text
    dataset = _check_nnunet_dataset(out)
    assert dataset["numTraining"] == 16 + 2  # syn000: every frame; syn001: ED and ES
    assert dataset["labels"]["ignore"] == 4
    cases = {p.name for p in (out / "labelsTr").iterdir()}
    assert "syn001_f00.nii.gz" in cases and not any(c.startswith("syn002") for c in cases)
    test_images = sorted(p.name for p in (out / "imagesTs").iterdir())
    assert test_images == [f"syn002_f{t:02d}_0000.nii.gz" for t in range(16)]
    es = open_cohort(cohort).load("syn001").meta["es_frame"]
    seg = np.asarray(nib.load(str(out / "labelsTr" / f"syn001_f{es:02d}.nii.gz")).dataobj)
    assert seg[0, 0, 0] == 4 and json.loads(text.strip().splitlines()[-1])["training_cases"] == 18
    image = nib.load(str(out / "imagesTr" / "syn000_f03_0000.nii.gz"))
    cine = open_cohort(cohort).load("syn000").cine
    assert np.array_equal(np.asarray(image.dataobj), cine[..., 3])


def test_nnunet_export_of_a_verified_release(
    built: dict[str, Path], tmp_path: Path, run_cli: Any
) -> None:
    out = tmp_path / "Dataset502_Release"
    code, text = run_cli("export", built["release"], "--out", out, "--public-key", built["pub"])
    assert code == 0, text
    dataset = _check_nnunet_dataset(out)
    assert dataset["numTraining"] == 3 * 16 and "ignore" not in dataset["labels"]
    assert not (out / "imagesTs").exists()
    with pytest.raises(ConfigError, match=r"Dataset<NNN>_<Name>"):
        export_nnunet(built["release"], tmp_path / "nnunet")
    with pytest.raises(ConfigError, match="already exists"):
        export_nnunet(built["release"], out)
    assert re.fullmatch(r"Dataset\d{3}_\w+", out.name)
