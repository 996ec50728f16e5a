"""Quality scoring maths for the ``quality`` processor: pure functions, no state, no telemetry.

Audio: the ITU-T G.107 E-model, reduced to the terms a WebRTC receiver's stats can feed.
Video: a bits-per-pixel model. Both give a MOS on the 1..4.5 scale of G.107 Annex B.

**Audio (E-model, ITU-T G.107).** ``R = R0 − Id − Ie,eff`` (G.107 §7, with ``A = 0``):

* ``R0 = 93.2``: the rating G.107 gives when every parameter is at its default value (no delay, no
  loss). The loudness, noise and sidetone of the endpoints are unknown here, so they stay at default.
* ``Id`` (delay impairment): the fit of G.107's ``Idte + Idle + Idd`` with default echo parameters
  by R. G. Cole and J. H. Rosenbluth, "Voice over IP performance monitoring", ACM SIGCOMM Computer
  Communication Review 31(2), 2001: ``Id = 0.024·d + 0.11·(d − 177.3)·H(d − 177.3)``. Here ``d`` is
  the one-way mouth-to-ear delay in milliseconds and ``H`` the unit step.
* ``Ie,eff = Ie + (95 − Ie) · Ppl / (Ppl/BurstR + Bpl)`` (G.107 eq. 7-29). ``Ppl`` is the packet
  loss in percent. ``BurstR = 1`` means random loss: RTCP counters say nothing about burstiness.
* ``Ie``/``Bpl`` for Opus: Opus is not in ITU-T G.113 Appendix I, which lists codecs' Ie and Bpl.
  We take the G.711 row *with* packet-loss concealment (G.711 Appendix I PLC): ``Ie = 0``,
  ``Bpl = 25.1``. Opus at WebRTC's usual 32 kbit/s is at least as clean as G.711 on the narrowband
  R scale, so ``Ie = 0``. Its decoder conceals lost frames too, so the PLC column applies; 25.1 is the
  most loss-robust value in the table. (client-monitor-js's ``mosScores.ts`` uses ``Bpl = 10``, or
  20 with FEC, and an Ie from the bitrate. It cites no source, so we keep G.113's value.)
* One-way delay ``d`` = RTT/2 + jitter-buffer delay + ``OPUS_ALGORITHMIC_DELAY``. Opus's default
  algorithmic delay is 26.5 ms (opus-codec.org): a 20 ms frame, which is what WebRTC endpoints send,
  plus 6.5 ms of encoder look-ahead. The caller measures the jitter-buffer delay
  (``jitterBufferDelay/jitterBufferEmittedCount``). Without it, the caller uses 2 × interarrival
  jitter, the common monitoring rule that a jitter buffer holds about two jitters.
* ``R → MOS``: G.107 Annex B, eq. (B-4):
  ``MOS = 1 + 0.035·R + R·(R − 60)·(100 − R)·7·10⁻⁶``, 1 for ``R < 0``, 4.5 for ``R > 100``. The cubic
  dips below 1 for ``0 < R < 6.5``, so the result is clamped to ``[1, 4.5]``. With no impairment,
  ``R = 93.2`` gives ``MOS ≈ 4.41``: the E-model ceiling for a narrowband call.

**Video (bits per pixel).** ``bpp = bitrate / (width · height · fps)``, in bits per pixel per frame.
It maps to ``MOS = clamp(0.56 · ln(bpp) + 5.36, 1, 4.5)``. This is the logarithmic fit of
ggarber/rtcscore, which ObserveRTC's client-monitor-js 4.x also uses (``calculateVideoMOS`` in
``src/scores/mosScores.ts``), here clamped to the 4.5 ceiling of the audio scale. Points on it:
``bpp 0.01 → 2.78``, ``0.05 → 3.68``, ``0.1 → 4.07``, ``≥ 0.215 → 4.5``, ``≤ 0.00041 → 1``.
rtcscore also subtracts ``1.9·ln(expectedFps/fps)`` and ``0.002·delay``. Both are left out: the
collector does not know the frame rate the sender aimed for, and delay is what ``quality_round_trip_time``
shows. Its codec factor (VP9 × 1.2) is left out too: 2.x track stats do not name their codec. So
VP9/AV1 are rated like VP8/H.264, a little pessimistically.
"""

from __future__ import annotations

import math

R_DEFAULT = 93.2
"""G.107: the R of a connection with every parameter at its default (``A = 0``), i.e. unimpaired."""

IE_OPUS = 0.0
"""Equipment impairment assumed for Opus: G.113 Appendix I's G.711 value (Opus is not listed there)."""

BPL_OPUS = 25.1
"""Packet-loss robustness assumed for Opus: G.113 Appendix I, G.711 with packet-loss concealment."""

OPUS_ALGORITHMIC_DELAY = 0.0265
"""Seconds: a 20 ms Opus frame plus 6.5 ms encoder look-ahead (Opus's default algorithmic delay)."""

JITTER_BUFFER_PER_JITTER = 2.0
"""Without a measured jitter-buffer delay, the buffer is taken to hold this many interarrival jitters."""

VIDEO_MOS_SLOPE = 0.56
VIDEO_MOS_INTERCEPT = 5.36
"""``MOS = 0.56·ln(bpp) + 5.36`` (ggarber/rtcscore, client-monitor-js ``calculateVideoMOS``)."""

MOS_MIN = 1.0
MOS_MAX = 4.5


def delay_impairment(one_way_delay_ms: float) -> float:
    """``Id`` for a one-way mouth-to-ear delay in ms (Cole & Rosenbluth's fit of G.107, default echo)."""
    d = max(0.0, one_way_delay_ms)
    return 0.024 * d + (0.11 * (d - 177.3) if d > 177.3 else 0.0)


def effective_equipment_impairment(
    loss_percent: float, ie: float = IE_OPUS, bpl: float = BPL_OPUS, burst_ratio: float = 1.0
) -> float:
    """``Ie,eff`` (G.107 eq. 7-29) for ``loss_percent`` (0..100) random (``burst_ratio=1``) packet loss."""
    ppl = min(100.0, max(0.0, loss_percent))
    return ie + (95.0 - ie) * ppl / (ppl / burst_ratio + bpl)


def r_factor(one_way_delay_ms: float, loss_percent: float, ie: float = IE_OPUS, bpl: float = BPL_OPUS) -> float:
    """The transmission rating ``R = 93.2 − Id − Ie,eff`` (may be below 0 for a hopeless connection)."""
    return R_DEFAULT - delay_impairment(one_way_delay_ms) - effective_equipment_impairment(loss_percent, ie, bpl)


def mos_from_r(r: float) -> float:
    """G.107 Annex B (B-4): the estimated MOS (conversational quality) of rating ``r``, in ``[1, 4.5]``."""
    if r <= 0.0:
        return MOS_MIN
    if r >= 100.0:
        return MOS_MAX
    mos = 1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6
    return min(MOS_MAX, max(MOS_MIN, mos))


def one_way_delay(round_trip_time: float, jitter_buffer_delay: float, codec_delay: float = OPUS_ALGORITHMIC_DELAY) -> float:
    """Seconds from mouth to ear: half the RTT, plus the receiver's jitter buffer, plus the codec's delay."""
    return max(0.0, round_trip_time) / 2.0 + max(0.0, jitter_buffer_delay) + max(0.0, codec_delay)


def audio_mos(
    round_trip_time: float,
    jitter_buffer_delay: float,
    fraction_lost: float,
    codec_delay: float = OPUS_ALGORITHMIC_DELAY,
    ie: float = IE_OPUS,
    bpl: float = BPL_OPUS,
) -> float:
    """E-model MOS of an audio stream. Times are in seconds; ``fraction_lost`` is 0..1."""
    delay_ms = 1000.0 * one_way_delay(round_trip_time, jitter_buffer_delay, codec_delay)
    return mos_from_r(r_factor(delay_ms, 100.0 * fraction_lost, ie, bpl))


def bits_per_pixel(bitrate: float, width: float, height: float, frames_per_second: float) -> float | None:
    """Bits per pixel per frame, or None when a factor is not positive (no picture, no frames)."""
    if bitrate <= 0 or width <= 0 or height <= 0 or frames_per_second <= 0:
        return None
    return bitrate / (width * height * frames_per_second)


def video_mos(bpp: float) -> float:
    """MOS of a video stream coded at ``bpp`` bits per pixel per frame, in ``[1, 4.5]``."""
    if bpp <= 0:
        return MOS_MIN
    return min(MOS_MAX, max(MOS_MIN, VIDEO_MOS_SLOPE * math.log(bpp) + VIDEO_MOS_INTERCEPT))
