"""Processor ``quality``: quality histograms per service, media unit and media kind, from client samples.

It records into the collector's telemetry registry, which the Prometheus and OTLP exporters publish.
It does not change the batch: it hands the very batch it got to the next stage, then observes it.
Observing after the hand-over means a batch refused downstream (``RetryLater``, resent by the client)
is counted once, when it finally goes through.

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

Deltas need the previous counters of each track. They are kept per (service_id, client_id,
peer_connection_id, direction, ssrc), and state is bounded two ways:

* At most ``max_tracks`` tracks are kept. The least recently updated one goes first.
* A track not updated for ``track_idle_timeout`` is forgotten. That is checked on each batch from the
  old end of the LRU order, so no timer is needed.

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
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from webrtc_observer.component import Consumer, Factory, Settings
from webrtc_observer.config import Duration
from webrtc_observer.model import Batch, ClientSample, Stats, Track

from . import _emodel

Direction = Literal["inbound", "outbound"]
TrackKey = tuple[str, str, str, str, int]
"""(service_id, client_id, peer_connection_id, direction, ssrc)."""

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
    """Tracks whose previous counters are kept for deltas; past it the least recently updated is dropped."""
    track_idle_timeout: Duration = Duration(300)
    """A track without samples for this long is forgotten; its next sample starts afresh."""
    mos: bool = True
    """Estimate ``quality_mos`` (E-model for audio, bits per pixel for video)."""

    def validate(self) -> list[tuple[str, str]]:
        issues: list[tuple[str, str]] = []
        if self.max_tracks < 1:
            issues.append(("max_tracks", f"must be at least 1, got {self.max_tracks}"))
        if self.track_idle_timeout <= 0:
            issues.append(("track_idle_timeout", "must be longer than 0"))
        return issues


class _TrackState:
    """What one track's next sample is compared with."""

    __slots__ = ("base_timestamp", "bytes", "frames", "jb_delay", "jb_emitted", "last_timestamp", "lost", "received", "seen")

    def __init__(self, timestamp: int, seen: float, stats: Stats, direction: Direction) -> None:
        self.last_timestamp = timestamp
        """The newest sample's client timestamp (ms); a sample not after it is a resend."""
        self.seen = seen
        """Collector monotonic time of the last update, for the idle timeout."""
        self.rebase(timestamp, stats, direction)

    def rebase(self, timestamp: int, stats: Stats, direction: Direction) -> None:
        self.base_timestamp = timestamp
        if direction == "inbound":
            self.bytes = _counter(stats, "bytesReceived")
            self.received = _counter(stats, "packetsReceived")
            self.lost = _number(stats, "packetsLost")
            self.jb_delay = _counter(stats, "jitterBufferDelay")
            self.jb_emitted = _counter(stats, "jitterBufferEmittedCount")
            self.frames = _counter(stats, "framesDecoded")
        else:
            self.bytes = _counter(stats, "bytesSent")
            self.received = self.lost = self.jb_delay = self.jb_emitted = None
            self.frames = _counter(stats, "framesEncoded")


def _number(stats: Mapping[str, Any], name: str) -> float | None:
    """A finite number (not a bool) from a stats record, else None."""
    value = stats.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _counter(stats: Mapping[str, Any], name: str) -> float | None:
    value = _number(stats, name)
    return value if value is not None and value >= 0 else None


def _seconds(stats: Mapping[str, Any], name: str) -> float | None:
    value = _counter(stats, name)
    return value if value is not None and value <= MAX_PLAUSIBLE_SECONDS else None


def _delta(current: float | None, previous: float | None) -> float | None:
    """``current − previous`` if both are known and the counter did not go back (a reset)."""
    if current is None or previous is None or current < previous:
        return None
    return current - previous


class QualityProcessor:
    def __init__(
        self,
        settings: Settings,
        config: QualityConfig,
        next_consumer: Consumer,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._next = next_consumer
        self._max_tracks = config.max_tracks
        self._idle = float(config.track_idle_timeout)
        self._mos_enabled = config.mos
        self._clock = clock
        self._log = settings.logger
        self._label = str(settings.id)
        self._tracks: OrderedDict[TrackKey, _TrackState] = OrderedDict()
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
        self._tracks.clear()

    async def consume(self, batch: Batch) -> None:
        await self._next.consume(batch)
        self.observe(batch)

    @property
    def tracked(self) -> int:
        """How many tracks' counters are kept now."""
        return len(self._tracks)

    # -- observation ----------------------------------------------------------------------------
    def observe(self, batch: Batch) -> None:
        """Record the quality of the batch's client samples; never raises, never changes the batch."""
        now = self._clock()
        self._expire(now)
        for sample in batch.samples:
            if isinstance(sample, ClientSample):
                try:
                    self._client(sample, now)
                except Exception:  # a metric must never break the pipeline
                    self._failed.add(1, self._label)
                    self._log.error("quality measurement failed", exc_info=True, client_id=sample.client_id)
        self._tracks_gauge.set(len(self._tracks), self._label)

    def _expire(self, now: float) -> None:
        tracks = self._tracks
        deadline = now - self._idle
        expired = 0
        while tracks:
            key, state = next(iter(tracks.items()))
            if state.seen > deadline:
                break
            del tracks[key]
            expired += 1
        if expired:
            self._evicted.add(expired, self._label, "idle")

    def _client(self, sample: ClientSample, now: float) -> None:
        origin = sample.origin
        service, media_unit = origin.service_id, origin.media_unit_id
        score = sample.score
        if score is not None and math.isfinite(score) and 0.0 <= score <= 5.0:
            self._client_score.observe(score, service, media_unit)
        if not sample.inbound_tracks and not sample.outbound_tracks:
            return
        pair_rtts = _pair_round_trip_times(sample)
        for track in sample.inbound_tracks:
            self._track(sample, track, "inbound", pair_rtts, now)
        for track in sample.outbound_tracks:
            self._track(sample, track, "outbound", pair_rtts, now)

    def _track(self, sample: ClientSample, track: Track, direction: Direction, pair_rtts: dict[str, float], now: float) -> None:
        service, media_unit = sample.origin.service_id, sample.origin.media_unit_id
        pc = track.peer_connection_id or ""
        key: TrackKey = (service, sample.client_id, pc, direction, track.ssrc)
        timestamp = sample.timestamp
        state = self._tracks.get(key)
        if state is not None:
            state.seen = now
            self._tracks.move_to_end(key)
            if timestamp <= state.last_timestamp:
                return  # resent or reordered: already counted, or too late to be a delta
            state.last_timestamp = timestamp

        stats = track.stats
        labels = (service, media_unit, track.kind)
        rtt = _seconds(stats, "roundTripTime")
        if rtt is None:
            rtt = pair_rtts.get(pc)
        if rtt is not None:
            self._rtt.observe(rtt, *labels)
        jitter = _seconds(stats, "jitter")
        if jitter is not None:
            self._jitter.observe(jitter, *labels)
        if direction == "outbound":
            reported = _counter(stats, "fractionLost")
            if reported is not None and reported <= 1.0:
                self._fraction_lost.observe(reported, *labels)

        if state is None:
            self._tracks[key] = _TrackState(timestamp, now, stats, direction)
            while len(self._tracks) > self._max_tracks:
                self._tracks.popitem(last=False)
                self._evicted.add(1, self._label, "max_tracks")
            return

        interval = (timestamp - state.base_timestamp) / 1000.0
        if interval < MIN_INTERVAL:
            return  # keep the older baseline; the next sample gets a longer interval
        self._interval(state, stats, direction, labels, interval, rtt, jitter)
        state.rebase(timestamp, stats, direction)

    def _interval(
        self,
        state: _TrackState,
        stats: Stats,
        direction: Direction,
        labels: tuple[str, str, str],
        interval: float,
        rtt: float | None,
        jitter: float | None,
    ) -> None:
        """Observe what needs two samples of one track, ``interval`` seconds apart."""
        inbound = direction == "inbound"
        bitrate = None
        d_bytes = _delta(_counter(stats, "bytesReceived" if inbound else "bytesSent"), state.bytes)
        if d_bytes is not None:
            bitrate = 8.0 * d_bytes / interval
            self._bitrate.observe(bitrate, *labels, direction)
        if not inbound:
            return
        fraction_lost = None
        d_received = _delta(_counter(stats, "packetsReceived"), state.received)
        lost = _number(stats, "packetsLost")
        if d_received is not None and lost is not None and state.lost is not None:
            d_lost = max(0.0, lost - state.lost)  # negative with duplicates: RFC 3550 counts that as 0
            expected = d_received + d_lost
            if expected > 0:
                fraction_lost = d_lost / expected
                self._fraction_lost.observe(fraction_lost, *labels)
        if not self._mos_enabled:
            return
        if labels[2] == "audio":
            if fraction_lost is None or rtt is None:
                return
            buffer = _jitter_buffer_delay(state, stats, jitter)
            self._mos.observe(_emodel.audio_mos(rtt, buffer, fraction_lost), *labels)
        elif bitrate is not None:
            fps = _counter(stats, "framesPerSecond")
            if not fps:
                d_frames = _delta(_counter(stats, "framesDecoded"), state.frames)
                fps = d_frames / interval if d_frames else None
            width, height = _counter(stats, "frameWidth"), _counter(stats, "frameHeight")
            if fps and width and height:
                bpp = _emodel.bits_per_pixel(bitrate, width, height, fps)
                if bpp is not None:
                    self._mos.observe(_emodel.video_mos(bpp), *labels)


def _jitter_buffer_delay(state: _TrackState, stats: Stats, jitter: float | None) -> float:
    """Seconds an audio sample waited in the jitter buffer: over the interval, else overall, else 2 × jitter."""
    delay, emitted = _counter(stats, "jitterBufferDelay"), _counter(stats, "jitterBufferEmittedCount")
    d_delay, d_emitted = _delta(delay, state.jb_delay), _delta(emitted, state.jb_emitted)
    if d_delay is not None and d_emitted:
        value = d_delay / d_emitted
    elif delay is not None and emitted:
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
        rtt = _seconds(pair, "currentRoundTripTime")
        if rtt is None:
            continue
        pc = pair.get("peerConnectionId") or ""
        nominated = pair.get("nominated") is True and str(pair.get("state", "")).lower() == "succeeded"
        rank = ((pc, pair.get("candidatePairId")) in selected, nominated)
        if pc not in best or rank > best[pc][0]:
            best[pc] = (rank, rtt)
    return {pc: rtt for pc, (_, rtt) in best.items()}


def _create(settings: Settings, config: QualityConfig, next_consumer: Consumer) -> QualityProcessor:
    return QualityProcessor(settings, config, next_consumer)


FACTORY = Factory(
    kind="processor",
    type="quality",
    config_type=QualityConfig,
    create=_create,
    description="quality histograms (RTT, jitter, loss, bitrate, MOS, client score) per service, media unit and kind",
)
