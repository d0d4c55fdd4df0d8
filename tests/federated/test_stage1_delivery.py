"""The stage-1 autoencoder goes to each site once; sites keep it, checked by digest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MessageType, RecordDict

from fedcmr4d.errors import InputError
from fedcmr4d.federated.records import numpy_to_record, record_nbytes
from fedcmr4d.federated.stage1_delivery import (
    ARRAYS_KEY,
    CACHE_FILE,
    REF_KEY,
    Stage1Delivery,
    resolve_autoencoder,
    site_autoencoder,
    weights_digest,
)


def _autoencoder(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "autoencoder.encoder.weight": rng.normal(size=(8, 1, 3, 3, 3)).astype(np.float32),
        "autoencoder.quantizer.codebook": rng.normal(size=(16, 8)).astype(np.float32),
    }


def _train_message(node: int) -> Message:
    content = RecordDict({"config": ConfigRecord({"stage": "diffusion"})})
    return Message(content, dst_node_id=node, message_type=MessageType.TRAIN)


def test_digest_names_the_model_not_the_container() -> None:
    weights = _autoencoder()
    assert weights_digest(weights) == weights_digest(dict(reversed(list(weights.items()))))
    changed = {k: v.copy() for k, v in weights.items()}
    changed["autoencoder.quantizer.codebook"][0, 0] += 1e-3
    assert weights_digest(changed) != weights_digest(weights)
    as_float64 = {k: v.astype(np.float64) for k, v in weights.items()}
    assert weights_digest(as_float64) != weights_digest(weights)


def test_arrays_go_to_each_site_once_and_again_after_an_error(task_identity: None) -> None:
    record = numpy_to_record(_autoencoder())
    delivery = Stage1Delivery(record)
    first = [_train_message(node) for node in (11, 12, 13)]
    assert sum(delivery.attach(m) for m in first) == 3 * record_nbytes(record)
    assert all(ARRAYS_KEY in m.content.array_records for m in first)
    assert {m.content.config_records[REF_KEY]["sha256"] for m in first} == {delivery.digest}
    # site 12 fails (e.g. it lost its state folder), site 13 does not answer in time
    delivery.update(
        [
            Message(RecordDict(), reply_to=first[0]),
            Message(Error(code=0, reason="site failed"), reply_to=first[1]),
        ]
    )

    second = [_train_message(node) for node in (11, 12, 13)]
    assert [delivery.attach(m) for m in second] == [0, record_nbytes(record), record_nbytes(record)]
    assert [ARRAYS_KEY in m.content.array_records for m in second] == [False, True, True]
    assert all(REF_KEY in m.content.config_records for m in second)
    delivery.update([Message(RecordDict(), reply_to=m) for m in second])
    assert delivery.holders == {11, 12, 13}


def test_site_keeps_the_arrays_and_serves_digest_only_messages(
    task_identity: None, tmp_path: Path
) -> None:
    weights = _autoencoder()
    delivery = Stage1Delivery(numpy_to_record(weights))
    with_arrays, digest_only = _train_message(5), _train_message(5)
    delivery.attach(with_arrays)
    delivery.update([Message(RecordDict(), reply_to=with_arrays)])
    delivery.attach(digest_only)
    assert ARRAYS_KEY not in digest_only.content.array_records

    received = site_autoencoder(with_arrays, tmp_path)
    kept = site_autoencoder(digest_only, tmp_path)
    assert received is not None and kept is not None
    for name, value in weights.items():
        assert torch.equal(received[name], torch.from_numpy(value))
        assert torch.equal(kept[name], torch.from_numpy(value))
    assert (tmp_path / CACHE_FILE).is_file()
    assert not list(tmp_path.glob("*.partial"))
    assert site_autoencoder(_train_message(5), tmp_path) is None  # a stage-1 message


def test_missing_corrupt_or_other_copy_is_a_named_error(tmp_path: Path) -> None:
    weights = _autoencoder()
    digest = weights_digest(weights)
    with pytest.raises(InputError, match=rf"{CACHE_FILE}: no stage-1 autoencoder kept"):
        resolve_autoencoder(None, digest, tmp_path)

    other = _autoencoder(seed=1)
    resolve_autoencoder(numpy_to_record(other), weights_digest(other), tmp_path)
    expected = (
        rf"{CACHE_FILE}: holds stage-1 autoencoder \w{{12}}, the coordinator's is {digest[:12]}"
    )
    with pytest.raises(InputError, match=expected):
        resolve_autoencoder(None, digest, tmp_path)

    (tmp_path / CACHE_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match=rf"{CACHE_FILE}: unreadable stage-1 autoencoder"):
        resolve_autoencoder(None, digest, tmp_path)


def test_arrays_that_do_not_match_their_digest_are_refused(tmp_path: Path) -> None:
    weights = _autoencoder()
    tampered = {k: v.copy() for k, v in weights.items()}
    tampered["autoencoder.encoder.weight"] *= 2
    record: ArrayRecord = numpy_to_record(tampered)
    with pytest.raises(InputError, match="does not match"):
        resolve_autoencoder(record, weights_digest(weights), tmp_path)
    assert not (tmp_path / CACHE_FILE).exists()
