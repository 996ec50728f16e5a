"""Processor ``quality``: quality histograms per service, media unit and media kind, from client samples.

It records into the collector's telemetry registry, which the Prometheus and OTLP exporters publish.
It does not change the batch: it hands the very batch it got to the next stage, and observes it when
the message's transaction commits (:func:`webrtc_observer.transaction.after_commit`). A message
refused anywhere (``RetryLater``, ``Refused``, a sibling pipeline) leaves no trace in the baselines or
the histograms, and is counted once, when its retry goes through.

Histograms (names without prefix or unit suffix, as everywhere in the registry). Labels are
service_id, media_unit_id and kind unless said otherwise:

* ``quality_round_trip_time``: unit ``seconds``. One observation per track and sample.
* ``quality_jitter``: unit ``seconds``. One per track and sample.
* ``quality_fraction_lost``: unit ``ratio``. Inbound, one per track and interval between two samples;
  outbound, one per track and sample.
* ``quality_bitrate``: unit ``bits_per_second``, with one more label, ``direction`` (inbound or
  outbound). One per track and interval.
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
* bitrate: ``8·ΔbytesReceived`` (inbound) or ``8·ΔbytesSent`` (outbound), over the difference of the
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
and per track of the client (peer_connection_id, direction, ssrc), in one array of doubles updated in
place (about 200 bytes a track).

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
* A track that a client's sample no longer carries is forgotten.
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
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from webrtc_observer import state, transaction
from webrtc_observer.component import Consumer, Factory, Settings
from webrtc_observer.config import Duration
from webrtc_observer.model import Batch, ClientSample, Stats, Track
from webrtc_observer.state import LOCAL, Changes, Partition

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
BITRATE_BUCKETS = (1e3, 8e3, 16e3, 32e3, 64e3, 128e3, 256e3, 512e3, 1e6, 2e6, 4e6, 8e6, 16e6)
"""Bits per second, in doublings. Audio (Opus 6–128 kbit/s) sits at the low end. Video layers go from
about 100 kbit/s (thumbnails) to a few Mbit/s (1080p). ``le=1000`` holds near-silent or dry streams."""
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
        self.tracks: dict[tuple[str, bool, int], array[float]] = {}
        """(peer connection id, inbound, ssrc) -> the track's baseline, see ``_TRACK_FIELDS``."""


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


# A track's baseline is one array of doubles, updated in place: no objects per sample, and about 130
# bytes per track. NaN stands for an unknown value; every comparison with it is false.
_LAST, _BASE, _BYTES, _RECEIVED, _LOST, _JB_DELAY, _JB_EMITTED, _FRAMES = range(8)
_TRACK_FIELDS = 8
"""last sample timestamp (a sample not after it is a resend), baseline timestamp, then the counters
at the baseline: bytes, packets received, packets lost, jitter buffer delay and emitted count, frames."""
_NAN = math.nan


class _Measures(msgspec.Struct, gc=False):
    """The stats fields this processor reads (2.x names), taken from a track in one C call."""

    roundTripTime: float | None = None
    jitter: float | None = None
    fractionLost: float | None = None
    bytesReceived: float | None = None
    bytesSent: float | None = None
    packetsReceived: float | None = None
    packetsLost: float | None = None
    jitterBufferDelay: float | None = None
    jitterBufferEmittedCount: float | None = None
    framesDecoded: float | None = None
    framesEncoded: float | None = None
    framesPerSecond: float | None = None
    frameWidth: float | None = None
    frameHeight: float | None = None


_MEASURE_FIELDS = msgspec.structs.fields(_Measures)


def _measures(stats: Stats) -> _Measures:
    """Numbers of ``stats`` as floats; a field of another type (a bool, a string) counts as absent."""
    try:
        return msgspec.convert(stats, _Measures)
    except msgspec.ValidationError:  # rare: check field by field, keeping the good ones
        return _Measures(**{f.name: _number(stats.get(f.name)) for f in _MEASURE_FIELDS})


def _number(value: Any) -> float | None:
    """``value`` as a float if it is a finite int or float (not a bool), else None."""
    cls = value.__class__
    if cls is float:
        return value if -math.inf < value < math.inf else None  # false for NaN too
    if cls is int:
        return float(value)
    return None


def _counter(value: float | None) -> float:
    """A finite value ≥ 0, else NaN."""
    return value if value is not None and 0.0 <= value < math.inf else _NAN


def _finite(value: float | None) -> float:
    return value if value is not None and -math.inf < value < math.inf else _NAN


def _seconds(value: float | None) -> float | None:
    return value if value is not None and 0.0 <= value <= MAX_PLAUSIBLE_SECONDS else None


def _delta(current: float, previous: float) -> float | None:
    """``current − previous`` if both are known and the counter did not go back (a reset)."""
    delta = current - previous
    return delta if delta >= 0 else None  # false for NaN


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


_MAX_BOUND = 4096
"""(service, media unit, kind) series kept bound; past it the cache starts over (binding again is cheap)."""


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
        self._bound: dict[tuple[str, str, str], _KindSeries] = {}
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
            "Payload bitrate of RTP streams, per track and interval between samples",
            BITRATE_LABELS,
            BITRATE_BUCKETS,
            "bits_per_second",
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
        await self._next.consume(batch)
        # Tracks' baselines and histograms change only when the message commits: a message refused
        # here, downstream or by a sibling pipeline leaves no trace, and its retry is counted once.
        await transaction.after_commit(lambda: self.observe(batch))

    @property
    def tracked(self) -> int:
        """How many tracks' counters are kept now, all partitions together."""
        return self._track_count

    # -- observation ----------------------------------------------------------------------------
    def observe(self, batch: Batch) -> None:
        """Record the quality of the batch's client samples; never raises, never changes the batch."""
        part = self._part(batch.partition)
        if batch.partition is LOCAL:
            now = self._clock()
        else:
            t = _stream_time(batch)
            if t is not None and t > part.clock:
                part.clock = t
            now = part.clock / 1000
        self._expire(part, now)
        for sample in batch.samples:
            if isinstance(sample, ClientSample):
                try:
                    self._client(part, sample, now)
                except Exception:  # a metric must never break the pipeline
                    self._failed.add(1, self._label)
                    self._log.error("quality measurement failed", exc_info=True, client_id=sample.client_id)
        for report in batch.reports:  # the correlation processor says who left: forget them now
            if report.type == "CALL_EVENT" and report.payload.get("name") == "CLIENT_LEFT":
                key = (report.payload.get("serviceId"), report.payload.get("clientId"))
                gone = self._forget(part, key)
                if gone:
                    self._evicted.add(gone, self._label, "left")
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

    def _series(self, service: str, media_unit: str, kind: str) -> _KindSeries:
        key = (service, media_unit, kind)
        series = self._bound.get(key)
        if series is None:
            if len(self._bound) >= _MAX_BOUND:
                self._bound.clear()
            series = self._bound[key] = _KindSeries(self, service, media_unit, kind)
        return series

    def _client(self, part: _Part, sample: ClientSample, now: float) -> None:
        origin = sample.origin
        service, media_unit = origin.service_id, origin.media_unit_id
        score = sample.score
        if isinstance(score, (int, float)) and not isinstance(score, bool) and 0.0 <= score <= 5.0:  # false for NaN
            self._client_score.observe(score, service, media_unit)
        if not sample.inbound_tracks and not sample.outbound_tracks:
            return
        key = (service, sample.client_id)
        clients = part.clients
        client = clients.get(key)
        if client is None:
            client = clients[key] = _ClientState(now, 0)
        else:
            client.seen = now
            clients.move_to_end(key)
        part.touch(key, client)
        tracks = client.tracks
        known = len(tracks)
        pair_rtts = _pair_round_trip_times(sample)
        present: dict[tuple[str, bool, int], None] = {}
        for inbound, sample_tracks in ((True, sample.inbound_tracks), (False, sample.outbound_tracks)):
            for track in sample_tracks:
                track_key = (track.peer_connection_id or "", inbound, track.ssrc)
                present[track_key] = None
                self._track(sample, track, track_key, tracks, pair_rtts)
        if len(tracks) > len(present):  # tracks the client no longer reports are forgotten
            for gone in [k for k in tracks if k not in present]:
                del tracks[gone]
        added = len(tracks) - known
        part.tracks += added
        self._track_count += added
        if self._track_count > self._max_tracks:
            self._bound_tracks(part, client)
            extra = list(tracks)[self._max_tracks :]
            if extra:  # one client alone has more tracks than allowed: keep its first ones
                for track_key in extra:
                    del tracks[track_key]
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
            out[_CLOCK_KEY] = state.encode(part.clock)
            part.clock_saved = part.clock
        return out

    def assign(self, partition: Partition, entries: Mapping[bytes, bytes]) -> None:
        """Own ``partition`` from ``entries``: its clients, in their LRU order, and its clock."""
        self.revoke(partition)
        part = _Part()
        part.journaled = True
        restored: list[tuple[int, tuple[str, str], _ClientState]] = []
        for raw_key, raw in entries.items():
            key = state.decode(raw_key)
            value = state.decode(raw)
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
        self._tracks_gauge.set(self._track_count, self._label)

    def revoke(self, partition: Partition) -> None:
        """Forget ``partition`` (another member owns it now); :data:`LOCAL` starts over empty."""
        part = self._parts.pop(partition, None)
        if partition is LOCAL:
            self._parts[LOCAL] = _Part()
        if part is not None:
            self._track_count -= part.tracks
            self._tracks_gauge.set(self._track_count, self._label)

    def _track(
        self,
        sample: ClientSample,
        track: Track,
        key: tuple[str, bool, int],
        tracks: dict[tuple[str, bool, int], array[float]],
        pair_rtts: dict[str, float],
    ) -> None:
        inbound = key[1]
        timestamp = sample.timestamp
        baseline = tracks.get(key)
        if baseline is not None:
            if timestamp <= baseline[_LAST]:
                return  # resent or reordered: already counted, or too late to be a delta
            baseline[_LAST] = timestamp

        m = _measures(track.stats)
        origin = sample.origin
        series = self._series(origin.service_id, origin.media_unit_id, track.kind)
        rtt = _seconds(m.roundTripTime)
        if rtt is None:
            rtt = pair_rtts.get(key[0])
        if rtt is not None:
            series.rtt.observe(rtt)
        jitter = _seconds(m.jitter)
        if jitter is not None:
            series.jitter.observe(jitter)
        if not inbound:
            reported = _counter(m.fractionLost)
            if reported <= 1.0:  # false for NaN
                series.fraction_lost.observe(reported)

        if inbound:
            counters = (
                _counter(m.bytesReceived),
                _counter(m.packetsReceived),
                _finite(m.packetsLost),
                _counter(m.jitterBufferDelay),
                _counter(m.jitterBufferEmittedCount),
                _counter(m.framesDecoded),
            )
        else:
            counters = (_counter(m.bytesSent), _NAN, _NAN, _NAN, _NAN, _counter(m.framesEncoded))
        if baseline is None:
            tracks[key] = array("d", (timestamp, timestamp, *counters))
            return

        interval = (timestamp - baseline[_BASE]) / 1000.0
        if interval < MIN_INTERVAL:
            return  # keep the older baseline; the next sample gets a longer interval
        self._interval(baseline, counters, m, inbound, track.kind, series, interval, rtt, jitter)
        baseline[_BASE] = timestamp
        baseline[_BYTES : _FRAMES + 1] = array("d", counters)

    def _interval(
        self,
        before: array[float],
        after: tuple[float, float, float, float, float, float],
        m: _Measures,
        inbound: bool,
        kind: str,
        series: _KindSeries,
        interval: float,
        rtt: float | None,
        jitter: float | None,
    ) -> None:
        """Observe what needs two samples of one track, ``interval`` seconds apart."""
        bitrate = None
        d_bytes = _delta(after[0], before[_BYTES])
        if d_bytes is not None:
            bitrate = 8.0 * d_bytes / interval
            (series.bitrate_in if inbound else series.bitrate_out).observe(bitrate)
        if not inbound:
            return
        fraction_lost = None
        d_received = _delta(after[1], before[_RECEIVED])
        d_lost = after[2] - before[_LOST]
        if d_received is not None and d_lost == d_lost:  # NaN when either count is unknown
            d_lost = max(0.0, d_lost)  # negative with duplicates: RFC 3550 counts that as 0
            expected = d_received + d_lost
            if expected > 0:
                fraction_lost = d_lost / expected
                series.fraction_lost.observe(fraction_lost)
        if not self._mos_enabled:
            return
        if kind == "audio":
            if fraction_lost is None or rtt is None:
                return
            buffer = _jitter_buffer_delay(before, after, jitter)
            series.mos.observe(_emodel.audio_mos(rtt, buffer, fraction_lost))
        elif bitrate is not None:
            reported_fps = _counter(m.framesPerSecond)
            fps: float | None = reported_fps
            if not reported_fps > 0:  # also NaN
                d_frames = _delta(after[5], before[_FRAMES])
                fps = d_frames / interval if d_frames else None
            width, height = _counter(m.frameWidth), _counter(m.frameHeight)
            if fps and width > 0 and height > 0:
                bpp = _emodel.bits_per_pixel(bitrate, width, height, fps)
                if bpp is not None:
                    series.mos.observe(_emodel.video_mos(bpp))


def _jitter_buffer_delay(before: array[float], after: tuple[float, ...], jitter: float | None) -> float:
    """Seconds an audio sample waited in the jitter buffer: over the interval, else overall, else 2 × jitter."""
    delay, emitted = after[3], after[4]
    d_delay, d_emitted = _delta(delay, before[_JB_DELAY]), _delta(emitted, before[_JB_EMITTED])
    if d_delay is not None and d_emitted:
        value = d_delay / d_emitted
    elif delay >= 0 and emitted > 0:  # false for NaN
        value = delay / emitted
    else:
        value = _emodel.JITTER_BUFFER_PER_JITTER * (jitter or 0.0)
    return min(value, MAX_PLAUSIBLE_SECONDS)


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
        rtt = _seconds(_number(pair.get("currentRoundTripTime")))
        if rtt is None:
            continue
        pc = pair.get("peerConnectionId") or ""
        nominated = pair.get("nominated") is True and str(pair.get("state", "")).lower() == "succeeded"
        rank = ((pc, pair.get("candidatePairId")) in selected, nominated)
        if pc not in best or rank > best[pc][0]:
            best[pc] = (rank, rtt)
    return {pc: rtt for pc, (_, rtt) in best.items()}


# -- state: the changelog form of a client ----------------------------------------------------------

_CLOCK_KEY = state.encode(("clock", "", ""))
_STATE_VERSION = 1


def _stream_time(batch: Batch) -> int | None:
    """The batch's record time, or the latest receive time of its samples (epoch ms)."""
    t = batch.time
    for sample in batch.samples:
        received = sample.origin.received_at
        if type(received) is int and (t is None or received > t):
            t = received
    return t


def _dump_client(client: _ClientState) -> list[Any]:
    """``[version, seen, order, [[pc, inbound, ssrc, [baseline...]], ...]]``, tracks in their order
    (``max_tracks`` keeps a client's first ones)."""
    return [
        _STATE_VERSION,
        client.seen,
        client.order,
        [[pc, inbound, ssrc, baseline.tolist()] for (pc, inbound, ssrc), baseline in client.tracks.items()],
    ]


def _load_client(value: list[Any]) -> _ClientState:
    if value[0] != _STATE_VERSION:
        raise ValueError(f"quality state version {value[0]} is not {_STATE_VERSION}")
    _, seen, order, tracks = value
    client = _ClientState(float(seen), int(order))
    for pc, inbound, ssrc, baseline in tracks:
        client.tracks[(pc, bool(inbound), ssrc)] = array("d", baseline)
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
