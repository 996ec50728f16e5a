"""Processor ``quality``: quality histograms per service, media unit and media kind, from client samples.

It records into the collector's telemetry registry, which the Prometheus and OTLP exporters publish.

As a batch passes, every track of its client samples is measured from the baselines as they are
(:meth:`QualityProcessor.measure`, which changes nothing): one :class:`~webrtc_observer.model.TrackQuality`
per track and sample, handed on in the batch's ``quality`` list (``msgspec.structs.replace``: samples,
reports, partition and time as they came), so later stages (``issues``, ``summary``, the live view) use
the very numbers the histograms get. When the message's transaction commits
(:func:`webrtc_observer.transaction.after_commit`), :meth:`QualityProcessor.commit` observes those same
values into the histograms and keeps the new baselines. A message refused anywhere (``RetryLater``,
``Refused``, a sibling pipeline) leaves no trace in the baselines or the histograms, and is counted
once, when its retry goes through. A batch in which nothing was measured is handed on as it is.

What a TrackQuality holds beyond the histograms' values: ``packets_delta``, ``bytes_delta`` and
``frames_delta`` over the interval (packets and bytes received or sent, frames decoded or encoded),
``interval``, ``fps`` (video: ``framesPerSecond``, else the interval's frames per second), the frame
size, and for outbound video the sender's ``qualityLimitationReason`` when it is not ``none``. It
also says whose track it is, as the sample and its track do (the live view learns its tracks from
it): call, room, client, user, peer connection, SSRC, kind, direction, track id and, for an inbound
track, the sender's client and user ids the correlation processor found.

Histograms (names without prefix or unit suffix, as everywhere in the registry). Labels are
service_id, media_unit_id and kind unless said otherwise:

* ``quality_round_trip_time``: unit ``seconds``. One observation per track and sample.
* ``quality_jitter``: unit ``seconds``. One per track and sample.
* ``quality_fraction_lost``: unit ``ratio``. Inbound, one per track and interval between two samples;
  outbound, one per track and sample.
* ``quality_bitrate``: unit ``bytes_per_second`` (Prometheus' base unit: promtool refuses bits), with
  one more label, ``direction`` (inbound or outbound). One per track and interval. TrackQuality's
  ``bitrate`` is the same interval in bits per second (8 × the observed value).
* ``quality_mos``: no unit, 1..4.5. One per inbound track and interval.
* ``quality_client_score``: no unit, 0..5, labels service_id and media_unit_id only. One per 3.x
  sample that carries a score.

Where each value comes from (2.x field names, as in :class:`~webrtc_observer.model.Track`):

* round-trip time: the track's ``roundTripTime``. For an outbound track that is from remote-inbound-rtp;
  for an inbound one, from remote-outbound-rtp, which browsers seldom fill. Without it, the
  ``currentRoundTripTime`` of the peer connection's candidate pair: the transport's selected pair
  first, then a nominated succeeded one, then any pair.
* jitter: the track's ``jitter``. Inbound, the receiver measures it; outbound, the far end reports it
  in RTCP.
* fraction lost: inbound, ``Δlost / (Δlost + Δreceived)`` between this sample and the previous one of
  the same track. A negative ``Δlost`` (duplicates) counts as 0, as RFC 3550 §6.4.1 does for the RTCP
  fraction. An interval with no packets expected gives no observation. Outbound, the ``fractionLost``
  the far end reported (remote-inbound-rtp), per sample.
* bitrate: ``ΔbytesReceived`` (inbound) or ``ΔbytesSent`` (outbound), over the difference of the
  samples' ``timestamp``. It counts payload bytes, as the W3C counters do. A simulcast sender has one
  outbound track per layer, so each layer is its own observation.
* MOS, inbound tracks only, where the media is heard or seen (see :mod:`._emodel` for the maths and
  sources).
  * Audio: the E-model, with delay = RTT/2 + jitter buffer + 26.5 ms of Opus. The jitter buffer is
    ``ΔjitterBufferDelay/ΔjitterBufferEmittedCount``, else the cumulative ratio, else 2 × jitter. It
    needs the interval's fraction lost and some RTT.
  * Video: bits per pixel from the interval's bitrate, ``frameWidth × frameHeight`` and
    ``framesPerSecond`` (else ``ΔframesDecoded/Δt``). It needs all three positive: a paused or frozen
    track gives no observation rather than a MOS of 1.
* client score: the ``score`` of a 3.x ClientSample (0..5, computed by client-monitor-js 4.x).

Deltas need the previous counters of each track. They are kept per client (service_id, client_id),
and per track of the client (peer_connection_id, direction, ssrc), as eight doubles packed in one
``bytes`` (about 105 bytes a track), replaced by a new one when the message commits.

This state is kept per input partition (:mod:`webrtc_observer.state`): a batch from partition ``p``
(``Batch.partition``) reads and updates the clients of ``p`` only, so the state of a partition can be
written out, dropped and rebuilt on another member, which then observes the next samples exactly as
this one would have. The processor implements :class:`~webrtc_observer.state.Stateful` with one
entry **per client** (a client's tracks never span partitions; its call is of no use here), keyed by
the msgpack of ``("client", service_id, client_id)`` and holding its tracks' baselines, when it was
last heard from and its place in the LRU order; a client forgotten (``CLIENT_LEFT``, idle, evicted)
gives a tombstone. One more entry, ``("clock", "", "")``, holds the partition's stream time.

Time in a partition of a log is its *stream time*: the highest ``Batch.time`` or sample receive time
(``Origin.received_at``) seen in it, never the wall clock, so idle expiry replays the same way on any
member. An empty batch with a time (a tick) is passed on unchanged and only advances that time.
Input without a partition (:data:`~webrtc_observer.state.LOCAL`: HTTP, WebSocket) is timed by the
wall clock. State is bounded:

* At most ``max_tracks`` tracks are kept by the processor. Past it, the least recently updated
  clients of the partition being updated are forgotten, whole; a single client with more tracks than
  that keeps its first ``max_tracks``. (Only this overload valve makes one partition's observations
  depend on what other partitions hold.)
* A client without samples for ``track_idle_timeout`` is forgotten. That is checked on each batch of
  its partition (ticks too) from the old end of the LRU order, so no timer is needed.
* A track that a client's sample no longer carries is forgotten. (A 2020 PeerConnectionSample is
  about one peer connection: only the tracks of the peer connection it describes are.)
* A client is forgotten when the batch carries its ``CLIENT_LEFT`` call event (the ``correlation``
  processor, placed before this one, emits it).

What is skipped:

* A sample whose ``timestamp`` is not after the track's last one (a resent or reordered sample) is
  skipped entirely.
* A counter that went down (a reset, e.g. a restarted sender) gives no delta. The new value becomes
  the baseline.
* Intervals shorter than ``MIN_INTERVAL`` keep the older baseline, so a burst of samples cannot
  produce absurd rates.
* Values that are not finite numbers, are negative, or are implausible (times over
  ``MAX_PLAUSIBLE_SECONDS``, fractions over 1, scores outside 0..5) are skipped.

The histograms have no processor label: run one ``quality`` processor per collector. Two instances fed
the same samples count them twice.
"""

from __future__ import annotations

import math
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from webrtc_observer import state, transaction
from webrtc_observer.component import Consumer, Factory, Settings
from webrtc_observer.config import Duration
from webrtc_observer.model import Batch, ClientSample, Stats, Track, TrackQuality
from webrtc_observer.state import LOCAL, Changes, Partition
from webrtc_observer.telemetry import BoundHistogram

from . import _emodel

MIN_INTERVAL = 0.2
"""Seconds: a sample closer than this to a track's baseline leaves the baseline for a longer interval."""
MAX_PLAUSIBLE_SECONDS = 60.0
"""An RTT, jitter or jitter-buffer delay above this is a broken value, not a bad network; skipped."""

LABELS = ("service_id", "media_unit_id", "kind")
BITRATE_LABELS = ("service_id", "media_unit_id", "kind", "direction")
SCORE_LABELS = ("service_id", "media_unit_id")

# Bucket upper bounds (``le``), each chosen around the thresholds that matter for its quantity.
RTT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0)
"""Seconds. 150 and 300 ms are client-monitor-js's high-rtt and very-high-rtt score thresholds. 300 ms
is also twice ITU-T G.114's 150 ms one-way delay, under which most interactive speech is hardly affected."""
JITTER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5)
"""Seconds. Healthy networks stay under 10 ms. 30 ms is a common VoIP planning limit. Beyond 100 ms,
the jitter buffer adds delay that users hear."""
FRACTION_LOST_BUCKETS = (0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
"""Ratio. ``le=0`` counts loss-free intervals exactly. 1 %, 5 % and 20 % are client-monitor-js's
packet-loss score steps; Opus FEC copes up to a few percent."""
BITRATE_BUCKETS = (125.0, 1e3, 2e3, 4e3, 8e3, 16e3, 32e3, 64e3, 125e3, 250e3, 500e3, 1e6, 2e6)
"""Bytes per second (Prometheus' base unit; 1, 8, 16 ... 16 000 kbit/s), in doublings. Audio (Opus
6–128 kbit/s, 0.75–16 kB/s) sits at the low end. Video layers go from about 100 kbit/s (thumbnails) to a
few Mbit/s (1080p). ``le=125`` (1 kbit/s) holds near-silent or dry streams."""
MOS_BUCKETS = (1.5, 2.0, 2.58, 3.1, 3.6, 4.03, 4.2, 4.34, 4.4, 4.5)
"""MOS. 2.58, 3.1, 3.6, 4.03 and 4.34 are the MOS that ITU-T G.109 gives for R = 50, 60, 70, 80 and 90,
the edges of its user-satisfaction categories. 4.4 sits just under the unimpaired 4.41; 4.5 is the
ceiling."""
SCORE_BUCKETS = (1.0, 2.0, 3.0, 3.5, 4.0, 4.25, 4.5, 4.75, 5.0)
"""client-monitor-js score (0..5). Its bands start at bad 1, poor 2, fair 3 and good 4. Most healthy
clients score 4–5, so that range is finer."""


@dataclass
class QualityConfig:
    max_tracks: int = 100000
    """Tracks whose previous counters are kept for deltas; past it the least recently updated clients go."""
    track_idle_timeout: Duration = Duration(300)
    """A client without samples for this long is forgotten with its tracks; its next sample starts afresh."""
    mos: bool = True
    """Estimate ``quality_mos`` (E-model for audio, bits per pixel for video)."""

    def validate(self) -> list[tuple[str, str]]:
        issues: list[tuple[str, str]] = []
        if self.max_tracks < 1:
            issues.append(("max_tracks", f"must be at least 1, got {self.max_tracks}"))
        if self.track_idle_timeout <= 0:
            issues.append(("track_idle_timeout", "must be longer than 0"))
        return issues


class _ClientState:
    """The tracks of one client, when the client was last heard from (for the idle timeout), and its
    place in its partition's LRU order (``order``: higher is more recent; restored from it)."""

    __slots__ = ("order", "seen", "tracks")

    def __init__(self, seen: float, order: int) -> None:
        self.seen = seen
        self.order = order
        self.tracks: dict[tuple[str, bool, int], bytes] = {}
        """(peer connection id, inbound, ssrc) -> the track's baseline, see ``_BASELINE``."""


class _Part:
    """The clients of one partition (:mod:`webrtc_observer.state`)."""

    __slots__ = ("clients", "clock", "clock_saved", "dirty", "journaled", "next_order", "tracks")

    def __init__(self) -> None:
        self.clients: OrderedDict[tuple[str, str], _ClientState] = OrderedDict()
        """(service id, client id) -> its tracks, least recently updated first."""
        self.tracks = 0
        """Tracks kept for the clients of this partition."""
        self.clock = 0
        """Stream time (epoch ms): the latest record or receive time seen in the partition."""
        self.clock_saved = 0
        self.next_order = 0
        self.dirty: set[tuple[str, str]] = set()
        """Clients changed or forgotten since the last :meth:`QualityProcessor.changes`."""
        self.journaled = False
        """Whether ``dirty`` is kept: from the first ``assign`` or ``changes`` of the partition on, so
        that a partition nobody checkpoints (HTTP input without ``workers``) keeps no list of keys."""

    def touch(self, key: tuple[str, str], client: _ClientState) -> None:
        """``client`` was updated: most recent in the LRU order, and to be written out."""
        client.order = self.next_order
        self.next_order += 1
        if self.journaled:
            self.dirty.add(key)


# A track's baseline is eight doubles packed in one bytes object (about 105 bytes per track, where an
# array of them took 150), never changed once kept (a message computes new ones, kept when it commits).
# NaN stands for an unknown value; every comparison with it is false.
_BASELINE = struct.Struct("=8d")
"""last sample timestamp (a sample not after it is a resend), baseline timestamp, then the counters
at the baseline: bytes, packets (received inbound, sent outbound), packets lost, jitter buffer delay and
emitted count, frames (decoded inbound, encoded outbound)."""
_LAST_OF = struct.Struct("=d").unpack_from
"""``(last sample timestamp,)`` of a baseline, read alone."""
_NAN = math.nan
_INF = math.inf

# The stats fields (2.x names) a track's counters come from, read in one ``_counters`` call per track:
# those of its direction, then for video the frame size and rate. An inbound track's ``packetsLost`` is
# read apart: it may be negative (duplicates).
_INBOUND_COUNTERS = ("bytesReceived", "packetsReceived", "jitterBufferDelay", "jitterBufferEmittedCount", "framesDecoded")
_OUTBOUND_FIELDS = ("bytesSent", "packetsSent", "framesEncoded", "fractionLost")
_VIDEO_FIELDS = ("frameWidth", "frameHeight", "framesPerSecond")
_INBOUND_VIDEO_FIELDS = _INBOUND_COUNTERS + _VIDEO_FIELDS
_OUTBOUND_VIDEO_FIELDS = _OUTBOUND_FIELDS + _VIDEO_FIELDS


def _counters(stats: Stats, names: tuple[str, ...]) -> list[float]:
    """The fields ``names`` of ``stats`` as floats ≥ 0; NaN for a field that is absent, not a number (a
    bool, a string), negative or not finite. One call per track rather than one per field."""
    values = []
    for name in names:
        value: Any = stats.get(name)
        cls = value.__class__
        if cls is int:
            value = float(value)  # finite (or too big for a float: OverflowError)
            values.append(value if value >= 0.0 else _NAN)
        elif cls is float:
            values.append(value if 0.0 <= value < _INF else _NAN)  # false for NaN
        else:
            values.append(_NAN)
    return values


def _finite(value: Any) -> float:
    """``value`` as a float if it is a finite number (an int or a float, not a bool), else NaN."""
    cls = value.__class__
    if cls is float:
        return value if -_INF < value < _INF else _NAN  # false for NaN
    return float(value) if cls is int else _NAN


def _seconds(value: Any) -> float | None:
    """``value`` as a float if it is a number (an int or a float, not a bool) of plausible seconds, else None."""
    cls = value.__class__
    if cls is float or cls is int:
        return float(value) if 0.0 <= value <= MAX_PLAUSIBLE_SECONDS else None  # false for NaN
    return None


def _delta(current: float, previous: float) -> float | None:
    """``current − previous`` if both are known and the counter did not go back (a reset)."""
    delta = current - previous
    return delta if delta >= 0.0 else None  # false for NaN


class _KindSeries:
    """The histogram series of one (service, media unit, kind), bound once instead of per observation."""

    __slots__ = ("bitrate_in", "bitrate_out", "fraction_lost", "jitter", "mos", "rtt")

    def __init__(self, q: QualityProcessor, service: str, media_unit: str, kind: str) -> None:
        self.rtt = q._rtt.bind(service, media_unit, kind)
        self.jitter = q._jitter.bind(service, media_unit, kind)
        self.fraction_lost = q._fraction_lost.bind(service, media_unit, kind)
        self.bitrate_in = q._bitrate.bind(service, media_unit, kind, "inbound")
        self.bitrate_out = q._bitrate.bind(service, media_unit, kind, "outbound")
        self.mos = q._mos.bind(service, media_unit, kind)

    def observe(self, q: TrackQuality) -> None:
        """The histograms' values of one track's measurement."""
        rtt, jitter, fraction_lost, bitrate, mos = q.rtt, q.jitter, q.fraction_lost, q.bitrate, q.mos
        if rtt is not None:
            self.rtt.observe(rtt)
        if jitter is not None:
            self.jitter.observe(jitter)
        if fraction_lost is not None:
            self.fraction_lost.observe(fraction_lost)
        if bitrate is not None:
            (self.bitrate_in if q.direction == "inbound" else self.bitrate_out).observe(bitrate / 8.0)
        if mos is not None:
            self.mos.observe(mos)


class _UnitSeries(dict[str, _KindSeries]):
    """The histogram series of one (service, media unit): its client score, and per kind (the key) the
    tracks' series, bound on first use."""

    __slots__ = ("_media_unit", "_processor", "_service", "score")

    def __init__(self, q: QualityProcessor, service: str, media_unit: str) -> None:
        super().__init__()
        self._processor = q
        self._service = service
        self._media_unit = media_unit
        self.score = q._client_score.bind(service, media_unit)

    def __missing__(self, kind: str) -> _KindSeries:
        series = self[kind] = _KindSeries(self._processor, self._service, self._media_unit, kind)
        return series


class _Plan:
    """What :meth:`QualityProcessor.measure` found in one batch, for :meth:`QualityProcessor.commit`."""

    __slots__ = ("clients", "clock", "failed", "now", "quality", "scores", "series")

    def __init__(self, now: float, clock: int | None) -> None:
        self.now = now
        """Seconds: the partition's stream time, or the wall clock for LOCAL input."""
        self.clock = clock
        """The partition's stream time after the batch (epoch ms); None for LOCAL input."""
        self.quality: list[TrackQuality] = []
        self.series: list[_KindSeries] = []
        """The histogram series of each of ``quality``, bound as it was measured."""
        self.scores: list[tuple[BoundHistogram, float]] = []
        """The client score of 3.x samples, and the series it goes to."""
        self.clients: list[tuple[tuple[str, str], dict[tuple[str, bool, int], bytes]]] = []
        """Per client sample with tracks: the client and the baselines of every track it carries."""
        self.failed = 0


_MAX_BOUND = 4096
"""(service, media unit) series kept bound (:class:`_UnitSeries`); past it the cache starts over (binding
again is cheap, and a series appears on its first observation only)."""


class QualityProcessor:
    def __init__(
        self,
        settings: Settings,
        config: QualityConfig,
        next_consumer: Consumer,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``clock``: seconds, the time of :data:`~webrtc_observer.state.LOCAL` input only; partitions
        of a log use their stream time."""
        self._next = next_consumer
        self._max_tracks = config.max_tracks
        self._idle = float(config.track_idle_timeout)
        self._mos_enabled = config.mos
        self._clock = clock
        self._log = settings.logger
        self._label = str(settings.id)
        self._parts: dict[Partition, _Part] = {LOCAL: _Part()}
        self._track_count = 0
        """Tracks kept, all partitions together (``max_tracks`` bounds it)."""
        self._gauged: int | None = None
        """The count ``quality_tracks`` shows (None: not set yet); set again when it changes."""
        self._bound: dict[tuple[str, str], _UnitSeries] = {}
        """(service, media unit) -> its series, bound once rather than per observation."""
        t = settings.telemetry
        self._rtt = t.histogram(
            "quality_round_trip_time", "Round-trip time of RTP streams, per track and sample", LABELS, RTT_BUCKETS, "seconds"
        )
        self._jitter = t.histogram(
            "quality_jitter", "Interarrival jitter of RTP streams, per track and sample", LABELS, JITTER_BUCKETS, "seconds"
        )
        self._fraction_lost = t.histogram(
            "quality_fraction_lost",
            "Fraction of packets lost, per track and interval between samples (outbound: as the far end reported)",
            LABELS,
            FRACTION_LOST_BUCKETS,
            "ratio",
        )
        self._bitrate = t.histogram(
            "quality_bitrate",
            "Payload rate of RTP streams in bytes per second (8 bits each), per track and interval between samples",
            BITRATE_LABELS,
            BITRATE_BUCKETS,
            "bytes_per_second",
        )
        self._mos = t.histogram(
            "quality_mos",
            "Estimated MOS (1..4.5) of received streams: E-model (ITU-T G.107) for audio, bits per pixel for video",
            LABELS,
            MOS_BUCKETS,
        )
        self._client_score = t.histogram(
            "quality_client_score", "Client score (0..5) computed by client-monitor-js 4.x", SCORE_LABELS, SCORE_BUCKETS
        )
        self._tracks_gauge = t.gauge("quality_tracks", "Tracks whose counters the quality processor keeps", ("processor",))
        self._evicted = t.counter(
            "quality_tracks_evicted", "Tracks forgotten by the quality processor, by reason", ("processor", "reason")
        )
        self._failed = t.counter("quality_failed_samples", "Samples the quality processor could not measure", ("processor",))

    async def start(self) -> None:
        pass

    async def shutdown(self) -> None:
        self._parts = {LOCAL: _Part()}
        self._track_count = 0

    async def consume(self, batch: Batch) -> None:
        plan = self.measure(batch)
        out = batch
        if plan.quality:  # later stages read what was measured here: Batch.quality
            out = msgspec.structs.replace(batch, quality=[*batch.quality, *plan.quality])
        await self._next.consume(out)
        # Tracks' baselines and histograms change only when the message commits: a message refused
        # here, downstream or by a sibling pipeline leaves no trace, and its retry is counted once.
        await transaction.after_commit(lambda: self.commit(batch, plan))

    @property
    def tracked(self) -> int:
        """How many tracks' counters are kept now, all partitions together."""
        return self._track_count

    # -- measurement ----------------------------------------------------------------------------
    def measure(self, batch: Batch) -> _Plan:
        """What the batch's client samples measure, from the baselines as they are: changes nothing;
        :meth:`commit` applies the plan. Never raises."""
        part = self._parts.get(batch.partition)
        clock: int | None = None
        if batch.partition is LOCAL:
            now = self._clock()
        else:
            clock = part.clock if part is not None else 0
            t = state.stream_time(batch)
            if t is not None and t > clock:
                clock = t
            now = clock / 1000
        plan = _Plan(now, clock)
        deadline = now - self._idle
        pending: dict[tuple[str, str], dict[tuple[str, bool, int], bytes]] = {}
        for sample in batch.samples:
            if not isinstance(sample, ClientSample):
                continue
            try:
                self._measure_client(part, sample, deadline, pending, plan)
            except Exception:  # a metric must never break the pipeline
                plan.failed += 1
                self._log.error("quality measurement failed", exc_info=True, client_id=sample.client_id)
        return plan

    def _measure_client(
        self,
        part: _Part | None,
        sample: ClientSample,
        deadline: float,
        pending: dict[tuple[str, str], dict[tuple[str, bool, int], bytes]],
        plan: _Plan,
    ) -> None:
        origin = sample.origin
        unit = self._unit(origin.service_id, origin.media_unit_id)
        score = sample.score
        if isinstance(score, (int, float)) and not isinstance(score, bool) and 0.0 <= score <= 5.0:  # false for NaN
            plan.scores.append((unit.score, float(score)))
        if not sample.inbound_tracks and not sample.outbound_tracks:
            return
        key = (origin.service_id, sample.client_id)
        tracks = pending.get(key)
        if tracks is None:  # the first sample of the client in this batch: its kept baselines
            client = part.clients.get(key) if part is not None else None
            tracks = client.tracks if client is not None and client.seen > deadline else {}
        pair_rtts = _PairRoundTripTimes(sample)
        after: dict[tuple[str, bool, int], bytes] = {}
        if origin.generation == "pcsample-v20200114":  # one sample per peer connection: keep the others'
            described = {t.peer_connection_id or "" for t in (*sample.inbound_tracks, *sample.outbound_tracks)}
            described.update(pc.peer_connection_id for pc in sample.peer_connections)
            after.update((k, v) for k, v in tracks.items() if k[0] not in described)
        for inbound, sample_tracks in ((True, sample.inbound_tracks), (False, sample.outbound_tracks)):
            for track in sample_tracks:
                track_key = (track.peer_connection_id or "", inbound, track.ssrc)
                old = tracks.get(track_key)
                quality, baseline = self._measure_track(sample, track, track_key, old, pair_rtts)
                if quality is not None:
                    plan.quality.append(quality)
                    plan.series.append(unit[track.kind])
                if baseline is not None:
                    after[track_key] = baseline
                elif old is not None:
                    after[track_key] = old
        pending[key] = after  # tracks the sample no longer carries are left out: forgotten
        plan.clients.append((key, after))

    def _measure_track(
        self,
        sample: ClientSample,
        track: Track,
        key: tuple[str, bool, int],
        baseline: bytes | None,
        pair_rtts: _PairRoundTripTimes,
    ) -> tuple[TrackQuality | None, bytes | None]:
        """The track's quality in this sample and its next baseline (a new one); (None, None) for a
        sample not after the track's last one."""
        inbound = key[1]
        timestamp = sample.timestamp
        if baseline is not None:
            last, base, b_bytes, b_packets, b_lost, b_jb_delay, b_jb_emitted, b_frames = _BASELINE.unpack(baseline)
            if timestamp <= last:
                return None, None  # resent or reordered: already counted, or too late to be a delta
        stats = track.stats
        rtt = _seconds(stats.get("roundTripTime"))
        if rtt is None:
            rtt = pair_rtts.get(key[0])
        jitter = _seconds(stats.get("jitter"))
        kind = track.kind
        video = kind == "video"
        width = height = reported_fps = _NAN  # video only
        fraction_lost: float | None = None
        jb_delay = jb_emitted = lost = _NAN  # inbound only
        if inbound:
            if video:
                count, packets, jb_delay, jb_emitted, frames, width, height, reported_fps = _counters(
                    stats, _INBOUND_VIDEO_FIELDS
                )
            else:
                count, packets, jb_delay, jb_emitted, frames = _counters(stats, _INBOUND_COUNTERS)
            lost = _finite(stats.get("packetsLost"))
        else:
            if video:
                count, packets, frames, reported, width, height, reported_fps = _counters(stats, _OUTBOUND_VIDEO_FIELDS)
            else:
                count, packets, frames, reported = _counters(stats, _OUTBOUND_FIELDS)
            if reported <= 1.0:  # false for NaN
                fraction_lost = reported
        # The next baseline: this sample.
        new = _BASELINE.pack(timestamp, timestamp, count, packets, lost, jb_delay, jb_emitted, frames)
        bitrate = mos = None
        d_bytes = d_packets = d_frames = None
        interval: float | None = None
        if baseline is not None:
            span = (timestamp - base) / 1000.0
            if span >= MIN_INTERVAL:
                interval = span
                d_bytes = _delta(count, b_bytes)
                d_packets = _delta(packets, b_packets)
                d_frames = _delta(frames, b_frames)
                if d_bytes is not None:
                    bitrate = 8.0 * d_bytes / interval
                if inbound:
                    d_lost = lost - b_lost
                    if d_packets is not None and d_lost == d_lost:  # NaN when either count is unknown
                        d_lost = d_lost if d_lost > 0.0 else 0.0  # negative with duplicates: RFC 3550 counts that as 0
                        expected = d_packets + d_lost
                        if expected > 0.0:
                            fraction_lost = d_lost / expected
            else:  # too short: keep the older baseline, so that the next sample gets a longer interval
                new = _BASELINE.pack(timestamp, base, b_bytes, b_packets, b_lost, b_jb_delay, b_jb_emitted, b_frames)
        fps = frame_width = frame_height = limitation = None
        if video:
            if reported_fps > 0.0:  # false for NaN
                fps = reported_fps
            elif d_frames is not None and interval:
                fps = d_frames / interval
            elif reported_fps == 0.0:
                fps = 0.0
            frame_width = int(width) if width > 0.0 else None
            frame_height = int(height) if height > 0.0 else None
            if not inbound:
                reason = stats.get("qualityLimitationReason")
                if isinstance(reason, str) and reason and reason != "none":
                    limitation = reason
            elif self._mos_enabled and bitrate is not None and fps and width > 0.0 and height > 0.0:
                bpp = _emodel.bits_per_pixel(bitrate, width, height, fps)
                if bpp is not None:
                    mos = _emodel.video_mos(bpp)
        elif inbound and self._mos_enabled and baseline is not None and fraction_lost is not None and rtt is not None:
            # audio: an inbound fraction lost is an interval's, so there is one
            wait = _jitter_buffer_delay(b_jb_delay, b_jb_emitted, jb_delay, jb_emitted, jitter)
            mos = _emodel.audio_mos(rtt, wait, fraction_lost)
        origin = sample.origin
        quality = TrackQuality(
            service_id=origin.service_id,
            media_unit_id=origin.media_unit_id,
            call_id=sample.call_id,
            client_id=sample.client_id,
            peer_connection_id=key[0],
            ssrc=track.ssrc,
            kind=kind,
            direction="inbound" if inbound else "outbound",
            timestamp=timestamp,
            track_id=track.track_id,
            rtt=rtt,
            jitter=jitter,
            fraction_lost=fraction_lost,
            bitrate=bitrate,
            mos=mos,
        )  # the rest apart: a call with more than 15 keywords first builds them into a dict, which costs more
        if sample.room_id is not None:
            quality.room_id = sample.room_id
        if sample.user_id is not None:
            quality.user_id = sample.user_id
        if track.remote_client_id is not None:
            quality.remote_client_id = track.remote_client_id
        if track.remote_user_id is not None:
            quality.remote_user_id = track.remote_user_id
        if interval is not None:
            quality.interval = interval
            quality.packets_delta = None if d_packets is None else int(d_packets)
            quality.bytes_delta = None if d_bytes is None else int(d_bytes)
            quality.frames_delta = None if d_frames is None else int(d_frames)
        if video:
            quality.fps = fps
            quality.frame_width = frame_width
            quality.frame_height = frame_height
            quality.quality_limitation = limitation
        return quality, new

    # -- commit: baselines and histograms -------------------------------------------------------
    def commit(self, batch: Batch, plan: _Plan) -> None:
        """Apply what :meth:`measure` found for ``batch``: the histograms, the tracks' baselines, the
        partition's clock, idle and departed clients forgotten. Never raises."""
        part = self._part(batch.partition)
        if plan.clock is not None and plan.clock > part.clock:
            part.clock = plan.clock
        now = plan.now
        self._expire(part, now)
        for series, score in plan.scores:
            series.observe(score)
        for kind_series, quality in zip(plan.series, plan.quality, strict=True):
            kind_series.observe(quality)
        for key, tracks in plan.clients:
            try:
                self._keep(part, key, tracks, now)
            except Exception:  # a metric must never break the pipeline
                plan.failed += 1
                self._log.error("quality baselines not kept", exc_info=True, client_id=key[1])
        if plan.failed:
            self._failed.add(plan.failed, self._label)
        for report in batch.reports:  # the correlation processor says who left: forget them now
            if report.type == "CALL_EVENT" and report.payload.get("name") == "CLIENT_LEFT":
                key = (report.payload.get("serviceId"), report.payload.get("clientId"))
                gone = self._forget(part, key)
                if gone:
                    self._evicted.add(gone, self._label, "left")
        if self._track_count != self._gauged:
            self._show_tracks()

    def _show_tracks(self) -> None:
        self._gauged = self._track_count
        self._tracks_gauge.set(self._track_count, self._label)

    def _part(self, partition: Partition) -> _Part:
        part = self._parts.get(partition)
        if part is None:  # input of a partition nobody assigned (a receiver without assignments)
            part = self._parts[partition] = _Part()
        return part

    def _forget(self, part: _Part, key: tuple[str, str]) -> int:
        """Forget a client of ``part`` (a tombstone at the next :meth:`changes`); its tracks' count."""
        client = part.clients.pop(key, None)
        if client is None:
            return 0
        if part.journaled:
            part.dirty.add(key)
        n = len(client.tracks)
        part.tracks -= n
        self._track_count -= n
        return n

    def _expire(self, part: _Part, now: float) -> None:
        clients = part.clients
        deadline = now - self._idle
        expired = 0
        while clients:
            key, client = next(iter(clients.items()))
            if client.seen > deadline:
                break
            expired += self._forget(part, key)
        if expired:
            self._evicted.add(expired, self._label, "idle")

    def _bound_tracks(self, part: _Part, keep: _ClientState) -> None:
        """Forget least recently updated clients of ``part`` (never ``keep``) until at most
        ``max_tracks`` are kept, or ``keep`` is the partition's last client."""
        clients = part.clients
        evicted = 0
        while self._track_count > self._max_tracks and len(clients) > 1:
            key, client = next(iter(clients.items()))
            if client is keep:
                clients.move_to_end(key)
                continue
            evicted += self._forget(part, key)
        if evicted:
            self._evicted.add(evicted, self._label, "max_tracks")

    def _unit(self, service: str, media_unit: str) -> _UnitSeries:
        key = (service, media_unit)
        series = self._bound.get(key)
        if series is None:
            if len(self._bound) >= _MAX_BOUND:
                self._bound.clear()
            series = self._bound[key] = _UnitSeries(self, service, media_unit)
        return series

    def _keep(self, part: _Part, key: tuple[str, str], tracks: dict[tuple[str, bool, int], bytes], now: float) -> None:
        """Keep the baselines a client sample left (``tracks``: every track it carries, in order)."""
        clients = part.clients
        client = clients.get(key)
        if client is None:
            client = clients[key] = _ClientState(now, 0)
        else:
            client.seen = now
            clients.move_to_end(key)
        part.touch(key, client)
        kept = client.tracks
        known = len(kept)
        for track_key, baseline in tracks.items():
            current = kept.get(track_key)
            if current is None or _LAST_OF(current)[0] <= _LAST_OF(baseline)[0]:  # a later sample committed first: keep its
                kept[track_key] = baseline
        if len(kept) > len(tracks):  # tracks the client no longer reports are forgotten
            for gone in [k for k in kept if k not in tracks]:
                del kept[gone]
        added = len(kept) - known
        part.tracks += added
        self._track_count += added
        if self._track_count > self._max_tracks:
            self._bound_tracks(part, client)
            extra = list(kept)[self._max_tracks :]
            if extra:  # one client alone has more tracks than allowed: keep its first ones
                for track_key in extra:
                    del kept[track_key]
                part.tracks -= len(extra)
                self._track_count -= len(extra)
                self._evicted.add(len(extra), self._label, "max_tracks")

    # -- state that moves with its partition (webrtc_observer.state) ----------------------------
    def changes(self, partition: Partition) -> Changes:
        """Every client changed or forgotten in ``partition`` since the last call, and its clock; see
        :class:`~webrtc_observer.state.Stateful`."""
        part = self._parts.get(partition)
        if part is None:
            return {}
        out: Changes = {}
        if not part.journaled:  # the first checkpoint of a partition that was not assigned: all of it
            part.journaled = True
            part.dirty.update(part.clients)
        for service, client_id in sorted(part.dirty):
            client = part.clients.get((service, client_id))
            key = state.encode(("client", service, client_id))
            out[key] = None if client is None else state.encode(_dump_client(client))
        part.dirty.clear()
        if part.clock != part.clock_saved:
            out[state.CLOCK_KEY] = state.encode(part.clock)
            part.clock_saved = part.clock
        return out

    def assign(self, partition: Partition, entries: Mapping[bytes, bytes]) -> None:
        """Own ``partition`` from ``entries``: its clients, in their LRU order, and its clock."""
        self.revoke(partition)
        part = _Part()
        part.journaled = True
        restored: list[tuple[int, tuple[str, str], _ClientState]] = []
        for key, value in state.decoded(entries):
            if key[0] == "clock":
                part.clock = part.clock_saved = int(value)
            elif key[0] == "client":
                client = _load_client(value)
                restored.append((client.order, (key[1], key[2]), client))
        restored.sort(key=lambda entry: (entry[0], entry[1]))
        for _, key, client in restored:
            part.clients[key] = client
            part.tracks += len(client.tracks)
        part.next_order = restored[-1][0] + 1 if restored else 0
        self._parts[partition] = part
        self._track_count += part.tracks
        self._show_tracks()

    def revoke(self, partition: Partition) -> None:
        """Forget ``partition`` (another member owns it now); :data:`LOCAL` starts over empty."""
        part = self._parts.pop(partition, None)
        if partition is LOCAL:
            self._parts[LOCAL] = _Part()
        if part is not None:
            self._track_count -= part.tracks
            self._show_tracks()


def _jitter_buffer_delay(delay_before: float, emitted_before: float, delay: float, emitted: float, jitter: float | None) -> float:
    """Seconds an audio sample waited in the jitter buffer: over the interval (from the baseline's
    delay and emitted count to the sample's ``delay`` and ``emitted``), else overall, else 2 × jitter."""
    d_delay, d_emitted = _delta(delay, delay_before), _delta(emitted, emitted_before)
    if d_delay is not None and d_emitted:
        value = d_delay / d_emitted
    elif delay >= 0.0 and emitted > 0.0:  # false for NaN
        value = delay / emitted
    else:
        value = _emodel.JITTER_BUFFER_PER_JITTER * (jitter or 0.0)
    return MAX_PLAUSIBLE_SECONDS if value > MAX_PLAUSIBLE_SECONDS else value


class _PairRoundTripTimes:
    """The candidate pairs' round-trip times of one sample (:func:`_pair_round_trip_times`), worked
    out when a track without its own RTT first asks: most tracks carry one."""

    __slots__ = ("_rtts", "_sample")

    def __init__(self, sample: ClientSample) -> None:
        self._sample = sample
        self._rtts: dict[str, float] | None = None

    def get(self, peer_connection_id: str) -> float | None:
        if self._rtts is None:
            self._rtts = _pair_round_trip_times(self._sample)
        return self._rtts.get(peer_connection_id)


def _pair_round_trip_times(sample: ClientSample) -> dict[str, float]:
    """peer connection id → ``currentRoundTripTime`` of its best candidate pair.

    The pair a transport names as selected wins, then a nominated succeeded pair, then any pair.
    """
    if not sample.candidate_pairs:
        return {}
    selected = {
        (t.get("peerConnectionId") or "", t.get("selectedCandidatePairId"))
        for t in sample.transports
        if t.get("selectedCandidatePairId")
    }
    best: dict[str, tuple[tuple[bool, bool], float]] = {}
    for pair in sample.candidate_pairs:
        rtt = _seconds(pair.get("currentRoundTripTime"))
        if rtt is None:
            continue
        pc = pair.get("peerConnectionId") or ""
        nominated = pair.get("nominated") is True and str(pair.get("state", "")).lower() == "succeeded"
        rank = ((pc, pair.get("candidatePairId")) in selected, nominated)
        kept = best.get(pc)
        if kept is None or rank > kept[0]:
            best[pc] = (rank, rtt)
    return {pc: rtt for pc, (_, rtt) in best.items()}


# -- state: the changelog form of a client ----------------------------------------------------------

_STATE_VERSION = 1


def _dump_client(client: _ClientState) -> list[Any]:
    """``[version, seen, order, [[pc, inbound, ssrc, [baseline...]], ...]]``, tracks in their order
    (``max_tracks`` keeps a client's first ones)."""
    return [
        _STATE_VERSION,
        client.seen,
        client.order,
        [[pc, inbound, ssrc, list(_BASELINE.unpack(baseline))] for (pc, inbound, ssrc), baseline in client.tracks.items()],
    ]


def _load_client(value: list[Any]) -> _ClientState:
    if value[0] != _STATE_VERSION:
        raise ValueError(f"quality state version {value[0]} is not {_STATE_VERSION}")
    _, seen, order, tracks = value
    client = _ClientState(float(seen), int(order))
    for pc, inbound, ssrc, baseline in tracks:
        client.tracks[(pc, bool(inbound), ssrc)] = _BASELINE.pack(*baseline)
    return client


def _create(settings: Settings, config: QualityConfig, next_consumer: Consumer) -> QualityProcessor:
    return QualityProcessor(settings, config, next_consumer)


FACTORY = Factory(
    kind="processor",
    type="quality",
    config_type=QualityConfig,
    create=_create,
    description="quality histograms (RTT, jitter, loss, bitrate, MOS, client score) per service, media unit and kind",
)
