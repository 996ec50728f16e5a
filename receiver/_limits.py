"""The receiver's ``limits``: the shape of an accepted sample is bounded, so what it costs downstream is too.

Every id of a sample is copied into the reports derived from it (clientId, callId... into each one), and
each record, event and meta item becomes at least one report: bounding their lengths and counts bounds
the reports one accepted message can produce. A message past a limit is refused whole (HTTP 400, reason
``limits``, the detail names the limit); nothing of it reaches the pipeline.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter
from typing import Any

from webrtc_observer.model import ClientSample, Origin, Sample, SfuSample, TurnSample

from ._decoding import RefusedInput

__all__ = ["LimitsConfig", "check"]


@dataclass
class LimitsConfig:
    max_id_length: int = 256
    """Longest id, in characters: serviceId, mediaUnitId, clientId, callId, roomId, userId, marker, sfuId,
    and every id of a record, event or meta item (peerConnectionId, trackId, transportId, ...)."""
    max_records_per_sample: int = 2000
    """Peer connections, tracks, transports, candidates, candidate pairs, data channels, codecs,
    certificates and media sources of one sample together (an SFU's transports, pads and channels;
    a TURN server's allocations and sessions)."""
    max_events_per_sample: int = 1000
    """Events, issues and extension stats of one sample together."""
    max_meta_per_sample: int = 1000
    """Meta items of one sample (2.x browser/os/platform/engine, media devices, ICE servers, SDPs...)."""
    max_samples_per_message: int = 100
    """Samples in one message (a 2.x ``Samples`` wrapper's client, SFU and TURN samples together)."""

    def validate(self) -> list[tuple[str, str]]:
        return [
            (name, "must be at least 1")
            for name in (
                "max_id_length",
                "max_records_per_sample",
                "max_events_per_sample",
                "max_meta_per_sample",
                "max_samples_per_message",
            )
            if getattr(self, name) < 1
        ]


def check(samples: list[Sample], limits: LimitsConfig, strings_checked: bool = False) -> None:
    """Raise ``RefusedInput("limits", ...)`` unless every sample of one message is within ``limits``.

    ``strings_checked``: the decoder already made sure that no id of the samples is longer than
    ``max_id_length`` (by bounding every string, or every id); the counts and the URL's ids are
    left to check."""
    if len(samples) > limits.max_samples_per_message:
        _refuse(f"{len(samples)} samples in one message, max_samples_per_message is {limits.max_samples_per_message}")
    for index, sample in enumerate(samples):
        if isinstance(sample, ClientSample):
            _check_client(sample, index, limits, strings_checked)
        elif isinstance(sample, SfuSample):
            _check_sfu(sample, index, limits, strings_checked)
        elif isinstance(sample, TurnSample):
            _check_counts(index, limits, len(sample.allocations) + len(sample.sessions), 0, 0)
            _check_ids(index, limits.max_id_length, _origin_ids(sample.origin))
            if not strings_checked:
                _check_ids(index, limits.max_id_length, (("serverId", sample.server_id),))
                _check_record_ids(index, limits.max_id_length, sample.allocations, sample.sessions)


def _check_client(s: ClientSample, index: int, limits: LimitsConfig, strings_checked: bool) -> None:
    tracks = s.inbound_tracks + s.outbound_tracks
    stats = (
        s.transports,
        s.candidate_pairs,
        s.local_candidates,
        s.remote_candidates,
        s.data_channels,
        s.codecs,
        s.certificates,
        s.media_sources,
    )
    records = len(s.peer_connections) + len(tracks) + sum(map(len, stats))
    _check_counts(index, limits, records, len(s.events) + len(s.issues) + len(s.extensions), len(s.meta))
    m = limits.max_id_length
    _check_ids(index, m, _origin_ids(s.origin))
    if strings_checked:
        return
    texts = chain(
        (s.client_id, s.call_id, s.room_id, s.user_id, s.marker, s.browser_id),
        map(_PC_ID, s.peer_connections),
        chain.from_iterable(map(_TRACK_IDS, tracks)),
        chain.from_iterable(map(_EVENT_IDS, s.events)),
        map(_ISSUE_ID, s.issues),
        chain.from_iterable(map(_META_IDS, s.meta)),
        _record_values(*stats, (t.stats for t in tracks)),
    )
    if _longest(texts) <= m:
        return  # no string of the sample is that long, id or not: the usual case, told in one C-level pass
    _check_ids(
        index,
        m,
        (
            ("clientId", s.client_id),
            ("callId", s.call_id),
            ("roomId", s.room_id),
            ("userId", s.user_id),
            ("marker", s.marker),
            ("browserId", s.browser_id),
        ),
        (("peerConnectionId", pc.peer_connection_id) for pc in s.peer_connections),
        (
            pair
            for t in tracks
            for pair in (
                ("peerConnectionId", t.peer_connection_id),
                ("trackId", t.track_id),
                ("sfuStreamId", t.sfu_stream_id),
                ("sfuSinkId", t.sfu_sink_id),
                ("remoteClientId", t.remote_client_id),
            )
        ),
        (pair for e in s.events for pair in (("peerConnectionId", e.peer_connection_id), ("mediaTrackId", e.track_id))),
        (("mediaTrackId", i.track_id) for i in s.issues),
        (pair for x in s.meta for pair in (("peerConnectionId", x.peer_connection_id), ("trackId", x.track_id))),
    )
    _check_record_ids(index, m, *stats, (t.stats for t in tracks))


_PC_ID = attrgetter("peer_connection_id")
_TRACK_IDS = attrgetter("peer_connection_id", "track_id", "sfu_stream_id", "sfu_sink_id", "remote_client_id")
_EVENT_IDS = attrgetter("peer_connection_id", "track_id")
_ISSUE_ID = attrgetter("track_id")
_META_IDS = attrgetter("peer_connection_id", "track_id")


def _record_values(*record_lists: Iterable[dict[str, Any]]) -> Iterable[Any]:
    return chain.from_iterable(map(dict.values, chain.from_iterable(record_lists)))


def _longest(values: Iterable[Any]) -> int:
    """The length of the longest string among ``values`` (0 if none)."""
    return max(map(len, filter(str.__instancecheck__, values)), default=0)


def _check_sfu(s: SfuSample, index: int, limits: LimitsConfig, strings_checked: bool) -> None:
    stats = (s.transports, s.inbound_rtp_pads, s.outbound_rtp_pads, s.sctp_channels)
    _check_counts(index, limits, sum(map(len, stats)), len(s.events) + len(s.extensions), 0)
    m = limits.max_id_length
    _check_ids(index, m, _origin_ids(s.origin))
    if not strings_checked:
        _check_ids(index, m, (("sfuId", s.sfu_id), ("marker", s.marker)))
        _check_record_ids(index, m, *stats, s.events)


def _check_counts(index: int, limits: LimitsConfig, records: int, events: int, meta: int) -> None:
    for count, limit, name, what in (
        (records, limits.max_records_per_sample, "max_records_per_sample", "records"),
        (events, limits.max_events_per_sample, "max_events_per_sample", "events"),
        (meta, limits.max_meta_per_sample, "max_meta_per_sample", "meta items"),
    ):
        if count > limit:
            _refuse(f"sample {index} has {count} {what}, {name} is {limit}")


def _origin_ids(origin: Origin) -> tuple[tuple[str, str | None], ...]:
    return (("serviceId", origin.service_id), ("mediaUnitId", origin.media_unit_id))


def _check_ids(index: int, max_length: int, *groups: Iterable[tuple[str, str | None]]) -> None:
    for group in groups:
        for name, value in group:
            if isinstance(value, str) and len(value) > max_length:
                _refuse(f"sample {index}: {name} of {len(value)} characters, max_id_length is {max_length}")


def _check_record_ids(index: int, max_length: int, *record_lists: Iterable[dict[str, Any]]) -> None:
    """Every ``...Id`` of the records (transportId, localCandidateId, padId, ...)."""
    for records in record_lists:
        for record in records:
            for name, value in record.items():
                if isinstance(value, str) and len(value) > max_length and name[-2:] in ("Id", "id"):
                    _refuse(f"sample {index}: {name} of {len(value)} characters, max_id_length is {max_length}")


def _refuse(detail: str) -> None:
    raise RefusedInput("limits", detail)
