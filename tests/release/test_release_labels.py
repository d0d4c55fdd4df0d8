"""A labelled synthetic cohort through audit, release, verify and nnU-Net export: the labels
travel signed, are listed in croissant.json, become labelsTr, and tampering is caught."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from fedcmr4d.audit.memorization import run_audit
from fedcmr4d.config import load_config
from fedcmr4d.data.cohort import Subject, write_cohort_index, write_subject
from fedcmr4d.data.phantom import write_phantom_cohort
from fedcmr4d.errors import InvalidReleaseError
from fedcmr4d.evaluate.segmenter import train_segmenter
from fedcmr4d.pipelines.labelling import label_cohort
from fedcmr4d.release.croissant import CROISSANT_FILE
from fedcmr4d.release.export import build_release
from fedcmr4d.release.nnunet import export_nnunet
from fedcmr4d.release.sign import generate_keypair
from fedcmr4d.release.verify import verify_release

KW = {"image_size": 32, "slices": 6, "frames": 16}
SET = [
    "evaluate.segmenter_steps=20",
    "evaluate.segmenter_batch_size=4",
    "evaluate.segmenter_features=[8,8,16,16,32,8]",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("labels-release")
    train = write_phantom_cohort(root / "train", 12, 301, id_prefix="train", **KW)
    write_phantom_cohort(root / "holdout", 8, 302, id_prefix="hold", **KW)
    fresh = write_phantom_cohort(root / "fresh", 3, 303, id_prefix="syn", **KW)
    synthetic = root / "synthetic"  # cines only, as `fedcmr4d sample` writes them
    for s in fresh:
        write_subject(synthetic, Subject(s.subject_id, s.cine, s.affine, s.frame_ms))
    write_cohort_index(synthetic, fresh.subject_ids, frames=16, provenance={"seed": 0})
    train_segmenter(train, root / "segmenter", load_config("tiny", SET))
    label_cohort(synthetic, root / "segmenter")  # sample -> label -> audit -> release
    audit = run_audit(synthetic, [root / "train"], [root / "holdout"], root / "audit.json")
    assert audit["passed"], audit.get("reasons")
    generate_keypair(root / "keys", None, allow_unencrypted=True)
    build_release(synthetic, root / "audit.json", root / "keys" / "signing.key", root / "release")
    return {"root": root, "release": root / "release", "pub": root / "keys" / "signing.pub"}


def test_release_carries_signed_labels_in_croissant_and_nnunet(
    built: dict[str, Path], tmp_path: Path
) -> None:
    release = built["release"]
    verify_release(release, built["pub"])
    manifest = json.loads((release / "manifest.json").read_text())
    listed = json.dumps(manifest)
    for sid in ("syn000", "syn001", "syn002"):
        assert f"cohort/{sid}/labels.nii.gz" in listed
    croissant = json.loads((release / CROISSANT_FILE).read_text())
    (subjects,) = [r for r in croissant["recordSet"] if r["@id"] == "subjects"]
    names = {f["name"] for f in subjects["field"]}
    assert {"labels", "ed_frame", "es_frame", "ef"} <= names
    for record in subjects["data"]:
        sid = record["subjects/subject_id"]
        meta = json.loads((release / "cohort" / sid / "meta.json").read_text())
        assert record["subjects/labels"] == f"cohort/{sid}/labels.nii.gz"
        assert record["subjects/ed_frame"] == meta["ed_frame"] >= 0
        assert record["subjects/ef"] == pytest.approx(meta["ef"])
    assert "Labels" in (release / "DATASHEET.md").read_text()
    export_nnunet(release, tmp_path / "Dataset503_Labelled")
    out = tmp_path / "Dataset503_Labelled"
    assert len(list((out / "labelsTr").iterdir())) == 3 * 16  # every frame is labelled
    assert not (out / "imagesTs").exists()
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 3 * 16


def test_tampered_labels_fail_verify_naming_the_file(
    built: dict[str, Path], tmp_path: Path, run_cli: Any
) -> None:
    release = Path(shutil.copytree(built["release"], tmp_path / "release"))
    target = release / "cohort" / "syn001" / "labels.nii.gz"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(InvalidReleaseError, match="SHA-256 differs") as err:
        verify_release(release, built["pub"])
    assert str(target) in str(err.value)
    code, out = run_cli("verify", release, "--public-key", built["pub"])
    assert code == 5 and "syn001/labels.nii.gz" in out
