"""Send the frozen stage-1 autoencoder to each site once per run, not with every stage-2 message.

Every stage-2 round (and the stage-2 evaluation) needs the aggregated autoencoder at every site,
to encode the site's own data to latents. It never changes during stage 2, yet it is a third of
a stage-2 message (cpu-small 3.1 of 15.1 MB, paper 133 of 406 MB per site and round). So:

- the coordinator tags every stage-2 message with the autoencoder's digest
  (``autoencoder-ref``/``sha256``) and attaches the arrays only for sites that have not yet
  replied without error to a message carrying them (:class:`Stage1Delivery`);
- a site keeps the last autoencoder it received in its state folder, checked against the digest
  (:func:`site_autoencoder`); a message without arrays is served from that copy, and a missing
  or corrupt copy is an error reply naming the file, after which the coordinator attaches the
  arrays again in the next round.

A restarted coordinator starts with an empty delivery list, so its first round resends.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from safetensors.torch import load_file, save_file

from fedcmr4d.errors import InputError
from fedcmr4d.federated.records import (
    numpy_to_weights,
    record_nbytes,
    record_to_numpy,
    record_to_weights,
)
from fedcmr4d.io import weights_digest

REF_KEY = "autoencoder-ref"
ARRAYS_KEY = "autoencoder"
CACHE_FILE = "stage1-autoencoder.safetensors"


class Stage1Delivery:
    """The coordinator's side: which sites (node ids) already hold this autoencoder."""

    def __init__(self, record: ArrayRecord) -> None:
        self.record = record
        self.digest = weights_digest(record_to_numpy(record))
        self.nbytes = record_nbytes(record)
        self.holders: set[int] = set()
        self._carried: set[int] = set()  # sites sent the arrays since the last update()

    def attach(self, message: Message) -> int:
        """Tag ``message`` with the digest; attach the arrays unless its site holds them.

        Returns:
            The autoencoder bytes this message carries (0 or the record's size).
        """
        message.content[REF_KEY] = ConfigRecord({"sha256": self.digest})
        node = message.metadata.dst_node_id
        if node in self.holders:
            return 0
        message.content[ARRAYS_KEY] = self.record
        self._carried.add(node)
        return self.nbytes

    def update(self, replies: Iterable[Message]) -> None:
        """After a round: a site that answered a message with the arrays without error holds
        them; a site that answered with an error may have lost them and gets them again."""
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                self.holders.discard(node)
            elif node in self._carried:
                self.holders.add(node)
        self._carried.clear()


def site_autoencoder(message: Message, state_dir: Path) -> dict[str, torch.Tensor] | None:
    """The stage-1 weights a message stands for (None when it names none)."""
    ref = message.content.config_records.get(REF_KEY)
    record = message.content.array_records.get(ARRAYS_KEY)
    return resolve_autoencoder(record, None if ref is None else str(ref["sha256"]), state_dir)


def resolve_autoencoder(
    record: ArrayRecord | None, digest: str | None, state_dir: Path
) -> dict[str, torch.Tensor] | None:
    """Stage-1 weights from the message's arrays (kept in ``state_dir`` for later rounds) or,
    when only the ``digest`` came, from that kept copy.

    Raises:
        InputError: the arrays do not match the digest, or the site has no matching copy.
    """
    if record is not None:
        if digest is None:
            return record_to_weights(record)
        arrays = record_to_numpy(record)
        if weights_digest(arrays) != digest:
            raise InputError(f"stage-1 autoencoder in the message does not match its {digest}")
        weights = numpy_to_weights(arrays)
        _save(Path(state_dir) / CACHE_FILE, weights, digest)
        return weights
    if digest is None:
        return None
    return _load(Path(state_dir) / CACHE_FILE, digest)


def _save(path: Path, weights: dict[str, torch.Tensor], digest: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_file({k: v.contiguous() for k, v in weights.items()}, str(partial), {"sha256": digest})
    partial.replace(path)


def _load(path: Path, digest: str) -> dict[str, torch.Tensor]:
    resend = "the coordinator attaches it again next round"
    if not path.is_file():
        raise InputError(f"{path}: no stage-1 autoencoder kept at this site ({resend})")
    try:
        weights = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise InputError(f"{path}: unreadable stage-1 autoencoder ({exc}; {resend})") from None
    found = weights_digest({k: v.numpy() for k, v in weights.items()})
    if found != digest:
        raise InputError(
            f"{path}: holds stage-1 autoencoder {found[:12]}, the coordinator's is {digest[:12]} "
            f"({resend})"
        )
    return weights
