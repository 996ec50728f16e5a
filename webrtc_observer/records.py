"""How batch contents are written out as self-describing records (one JSON object each).

Reports use the ObserveRTC envelope ``{"type", "schemaVersion", "payload"}``. Samples (in pipelines
without a reports processor) are written as ``{"type": "ClientSample"|"SfuSample"|"TurnSample",
"payload": <the model>}`` so that a raw pipeline is still useful for debugging and replay.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

from webrtc_observer.model import Batch

_encoder = msgspec.json.Encoder()


def json_records(batch: Batch) -> Iterator[bytes]:
    """Each record of ``batch`` as compact JSON, reports first."""
    encode = _encoder.encode
    for report in batch.reports:
        yield encode(report)
    for sample in batch.samples:
        yield encode({"type": type(sample).__name__, "payload": sample})


def json_lines(batches: Iterable[Batch], chunk_records: int = 2048) -> tuple[list[bytes], int]:
    """The records of ``batches`` as JSON lines (each ending with a newline), in chunks of at most
    ``chunk_records`` records, and how many records in all.

    Chunks, not one buffer: encoding a few thousand records at a time keeps the output buffer in
    the allocator's reach; one buffer of tens of megabytes costs twice as much per record.
    """
    records: list[Any] = []
    for batch in batches:
        records.extend(batch.reports)
        records.extend({"type": type(sample).__name__, "payload": sample} for sample in batch.samples)
    encode = _encoder.encode_lines
    return [encode(records[i : i + chunk_records]) for i in range(0, len(records), chunk_records)], len(records)


def record_types(batch: Batch) -> Iterator[str]:
    for report in batch.reports:
        yield report.type
    for sample in batch.samples:
        yield type(sample).__name__
