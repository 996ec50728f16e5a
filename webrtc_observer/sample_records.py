"""Samples as log records: what the ``kafka`` exporter writes with ``encoding: samples`` and the ``kafka``
receiver reads back.

A record's value is a small envelope, msgpack ``[kind, sample]``: ``kind`` is ``client``, ``sfu`` or
``turn`` and ``sample`` the decoded model (:mod:`webrtc_observer.model`) as msgpack, exactly as the
workers of ``service.workers`` ship samples to each other. The header ``format-version`` names the
envelope (:data:`FORMAT_VERSION`); a reader refuses a version it does not know. The key is the
sample's :func:`~webrtc_observer.model.routing_key`, the timestamp the sample's receive time.

A *tick* is a record with the header ``tick`` (value ``1``), no key and an empty value: it only says
"stream time in this partition has reached the record's timestamp", so quiet partitions advance.
"""

from __future__ import annotations

from typing import Any

import msgspec

from webrtc_observer.model import ClientSample, Sample, SfuSample, TurnSample, share_ids

FORMAT_VERSION = "webrtc-observer-samples/1"
FORMAT_HEADER = "format-version"
TICK_HEADER = "tick"

_KINDS: dict[type, str] = {ClientSample: "client", SfuSample: "sfu", TurnSample: "turn"}
_encoder = msgspec.msgpack.Encoder()
_envelope = msgspec.msgpack.Decoder(tuple[str, msgspec.Raw])
_decoders: dict[str, Any] = {
    "client": msgspec.msgpack.Decoder(ClientSample),
    "sfu": msgspec.msgpack.Decoder(SfuSample),
    "turn": msgspec.msgpack.Decoder(TurnSample),
}


class RecordError(ValueError):
    """A record that is not a sample of a known format version."""


def encode(sample: Sample) -> bytes:
    """The record value of ``sample``."""
    return _encoder.encode((_KINDS[type(sample)], sample))


def decode(value: bytes) -> Sample:
    """The sample of a record value; :class:`RecordError` if it is not one."""
    try:
        kind, raw = _envelope.decode(value)
        decoder = _decoders.get(kind)
        if decoder is None:
            raise RecordError(f"unknown sample kind {kind!r}")
        sample: Sample = decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise RecordError(f"not a sample record: {exc}") from None
    share_ids((sample,))
    return sample
