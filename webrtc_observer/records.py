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


def json_lines(batches: Iterable[Batch]) -> tuple[bytes, int]:
    """The records of ``batches`` as JSON lines (each line ends with a newline), and how many."""
    records: list[Any] = []
    for batch in batches:
        records.extend(batch.reports)
        records.extend({"type": type(sample).__name__, "payload": sample} for sample in batch.samples)
    return _encoder.encode_lines(records), len(records)


def record_types(batch: Batch) -> Iterator[str]:
    for report in batch.reports:
        yield report.type
    for sample in batch.samples:
        yield type(sample).__name__
