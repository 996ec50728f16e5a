"""Checkpoints and restores of partitioned processor state, without a broker: the logic the ``kafka``
receiver runs around its client library.

A **checkpoint** of some partitions, in this order (:class:`Checkpointer`):

1. between messages, collect ``changes(p)`` of every stateful processor, with the partition's
   position (the next input offset to consume);
2. write them to the changelog (key = ``<pipeline/processor>`` NUL the processor's key, value = the
   entry or None for a tombstone, header ``input-offset`` = the position, partition = ``p``);
3. flush: the changelog writes and every exporter's reports are durable;
4. commit the positions as the consumer group's offsets.

A failure at any step skips the rest: nothing is committed, and the changes collected are kept and
written again by the next checkpoint (an entry is the whole value of its key, so the newest wins).

A **restore** (:func:`restore_entries`) reads a changelog partition from its start and keeps, per key,
the record with the highest ``input-offset`` that is at most the group's committed offset (the later
one in the log among equals): a record past it was written by a checkpoint whose commit never
happened (its member died in between), and the records it describes are replayed from the
committed offset, yielding the same state again. Highest, not last: a member that lost the partition
(its session expired while it was frozen) may write a checkpoint after the new owner's, and its
commit fails, but its records stay in the log. Tombstoned keys are left out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from webrtc_observer.state import Stateful

SEPARATOR = b"\x00"
INPUT_OFFSET = "input-offset"


@dataclass(frozen=True, slots=True)
class ChangelogRecord:
    partition: int
    key: bytes
    value: bytes | None
    input_offset: int

    @property
    def headers(self) -> list[tuple[str, bytes]]:
        return [(INPUT_OFFSET, str(self.input_offset).encode())]


def changelog_key(namespace: str, key: bytes) -> bytes:
    return namespace.encode() + SEPARATOR + key


def split_key(key: bytes) -> tuple[str, bytes] | None:
    namespace, sep, rest = key.partition(SEPARATOR)
    if not sep:
        return None
    try:
        return namespace.decode(), rest
    except UnicodeDecodeError:
        return None


def input_offset(headers: Any) -> int | None:
    """The ``input-offset`` header of a changelog record (a list of name, value pairs), or None."""
    for name, value in headers or ():
        if name == INPUT_OFFSET and value is not None:
            try:
                return int(value)
            except ValueError:
                return None
    return None


@dataclass
class Restored:
    entries: dict[str, dict[bytes, bytes]]
    """namespace (``pipeline/processor``) → the processor's key → value."""
    records: int = 0
    """Changelog records read."""
    skipped: int = 0
    """Records past the committed offset, or without a usable key or header."""


def restore_entries(records: Iterable[tuple[bytes | None, bytes | None, int | None]], committed: int | None) -> Restored:
    """The state of a partition from its changelog records ``(key, value, input_offset)`` in log order,
    as of the committed input offset ``committed`` (None: the group never committed; nothing counts)."""
    latest: dict[bytes, tuple[int, bytes | None]] = {}
    read = skipped = 0
    for key, value, offset in records:
        read += 1
        if key is None or offset is None or committed is None or offset > committed:
            skipped += 1
            continue
        best = latest.get(key)
        if best is not None and best[0] > offset:
            skipped += 1  # a member that lost the partition wrote it late: older than what is kept
            continue
        latest[key] = (offset, value)
    entries: dict[str, dict[bytes, bytes]] = {}
    for key, (_, value) in latest.items():
        if value is None:
            continue
        split = split_key(key)
        if split is None:
            skipped += 1
            continue
        namespace, inner = split
        entries.setdefault(namespace, {})[inner] = value
    return Restored(entries, read, skipped)


Write = Callable[[list[ChangelogRecord]], Awaitable[None]]
Flush = Callable[[float], Awaitable[None]]
Commit = Callable[[dict[int, int]], Awaitable[None]]


class Checkpointer:
    """Runs checkpoints one at a time, in the order of the module docstring.

    ``stateful`` gives the processors (``pipeline/processor`` → :class:`Stateful`); ``write``
    produces changelog records and returns once they are acknowledged; ``flush`` waits until the
    exporters delivered what they accepted; ``commit`` commits input offsets (partition → next offset).
    """

    def __init__(
        self,
        stateful: Callable[[], list[tuple[str, Stateful]]],
        write: Write,
        flush: Flush,
        commit: Commit,
        flush_timeout: float,
    ) -> None:
        self._stateful = stateful
        self._write = write
        self._flush = flush
        self._commit = commit
        self._flush_timeout = flush_timeout
        self._lock = asyncio.Lock()
        self._unsent: dict[int, dict[bytes, bytes | None]] = {}
        """Changes collected and not yet part of a committed checkpoint, per partition."""
        self._committed: dict[int, int] = {}
        """The position last committed per partition."""

    def collect(self, positions: Mapping[int, int]) -> dict[int, tuple[int, dict[bytes, bytes | None]]]:
        """Step 1, between messages: each partition's position and changes (with what earlier failed
        checkpoints left unsent)."""
        processors = self._stateful()
        snapshot: dict[int, tuple[int, dict[bytes, bytes | None]]] = {}
        for partition, position in positions.items():
            pending = self._unsent.setdefault(partition, {})
            for namespace, processor in processors:
                for key, value in processor.changes(partition).items():
                    pending[changelog_key(namespace, key)] = value
            snapshot[partition] = (position, dict(pending))
        return snapshot

    async def checkpoint(self, positions: Callable[[], Mapping[int, int]], between_messages: asyncio.Lock) -> None:
        """Checkpoint the partitions ``positions()`` names (called while holding ``between_messages``,
        the lock every message is handled under). Raises what a failed step raised."""
        async with self._lock:
            async with between_messages:
                snapshot = self.collect(positions())
            snapshot = {p: (pos, changes) for p, (pos, changes) in snapshot.items() if changes or self._committed.get(p) != pos}
            if not snapshot:
                return
            records = [
                ChangelogRecord(p, key, value, position)
                for p, (position, changes) in sorted(snapshot.items())
                for key, value in changes.items()
            ]
            if records:
                await self._write(records)
            await self._flush(self._flush_timeout)
            offsets = {p: position for p, (position, _) in snapshot.items()}
            await self._commit(offsets)
            for p, (position, changes) in snapshot.items():
                pending = self._unsent.get(p, {})
                for key, value in changes.items():
                    if key in pending and pending[key] is value:
                        del pending[key]
                self._committed[p] = position

    def forget(self, partition: int) -> None:
        """The partition was revoked: what was not written is the next owner's to replay."""
        self._unsent.pop(partition, None)
        self._committed.pop(partition, None)

    def committed(self, partition: int) -> int | None:
        return self._committed.get(partition)

    def assigned(self, partition: int, committed: int | None) -> None:
        """A partition was assigned from the group's committed offset."""
        self._unsent.pop(partition, None)
        if committed is not None:
            self._committed[partition] = committed
