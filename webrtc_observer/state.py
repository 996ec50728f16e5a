"""Processor state that moves with its input partition: what stateful processors and the receivers that
own partitions agree on.

A receiver that reads a partitioned log (the ``kafka`` receiver) owns some of its partitions at a
time; every batch it hands on names its partition (:attr:`Batch.partition <webrtc_observer.model.Batch>`).
A stateful processor (correlation, quality, reports...) keeps its tables per partition, so the state
of one partition can be written out, dropped, and rebuilt elsewhere, and implements :class:`Stateful`:

- :meth:`Stateful.changes` returns what changed in a partition since the last call, as independent
  entries (key → value, ``None`` when the entity ended): one call, one SFU, one clock. The owner
  writes them to a changelog (a compacted Kafka topic, or a local store for ``service.workers``).
- :meth:`Stateful.assign` rebuilds a partition from the latest value of every key.
- :meth:`Stateful.revoke` forgets a partition another member now owns.

Input without partitions (HTTP, WebSocket) belongs to :data:`LOCAL`.

Time in a partition is *stream time*: the highest record timestamp (``Batch.time``) or receive time
(``Origin.received_at``) seen in it, in epoch milliseconds. Idle timers compare against it, never
against the wall clock, so they are plain fields of the state, survive a failover and replay the same
way. Only :data:`LOCAL` state, which no log replays, is also advanced by the wall clock.

Entries are encoded with :func:`encode`/:func:`decode` (msgpack); a processor owns the meaning of its
keys and values. The owner calls ``changes`` between messages, never during one, so an entry never
holds half a message.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import msgspec

if TYPE_CHECKING:
    from webrtc_observer.model import Batch

Partition = int | None
LOCAL: Partition = None
"""The partition of input that comes without one (HTTP and WebSocket receivers)."""

Changes = dict[bytes, "bytes | None"]
"""key → encoded value, or None: the entity ended (a tombstone)."""

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


def encode(value: Any) -> bytes:
    return _encoder.encode(value)


def decode(data: bytes) -> Any:
    return _decoder.decode(data)


CLOCK_KEY = encode(("clock", "", ""))
"""The key of a partition's clock entry, in every processor's namespace."""


def decoded(entries: Mapping[bytes, bytes]) -> Iterator[tuple[Any, Any]]:
    """The ``(key, value)`` of each entry given to :meth:`Stateful.assign`, decoded."""
    for key, value in entries.items():
        yield decode(key), decode(value)


def stream_time(batch: Batch) -> int | None:
    """The batch's record time, or the latest receive time of its samples (epoch ms): what advances
    a partition's clock."""
    t = batch.time
    for sample in batch.samples:
        received = sample.origin.received_at
        if type(received) is int and (t is None or received > t):
            t = received
    return t


@runtime_checkable
class Stateful(Protocol):
    """A processor whose state is kept per partition and can move with it."""

    def assign(self, partition: Partition, entries: Mapping[bytes, bytes]) -> None:
        """Own ``partition`` from now on, starting from ``entries`` (the latest value of each key,
        tombstoned keys left out; empty for a new partition). Replaces what was kept for it."""
        ...

    def revoke(self, partition: Partition) -> None:
        """Forget ``partition``: its state was written out and another member owns it now."""
        ...

    def changes(self, partition: Partition) -> Changes:
        """What changed in ``partition`` since the last call (or since ``assign``), and forget that
        it changed. An entry is the whole current value of its key."""
        ...


def owned(partitions: Mapping[Partition, Any], partition: Partition) -> Any:
    """The state of ``partition`` in ``partitions``: a helper for processors' error messages."""
    try:
        return partitions[partition]
    except KeyError:
        raise KeyError(f"partition {partition} is not assigned to this member") from None
