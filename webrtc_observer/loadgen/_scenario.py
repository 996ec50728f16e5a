"""The load generator's core: synthesized calls, as the samples their clients and SFUs would send.

A :class:`Scenario` is a deterministic simulation in *virtual* time. It knows nothing of sockets or
clocks: :meth:`Scenario.ticks` yields the messages in the order of their ``at`` (seconds since the
start), each a :class:`Tick` with a JSON-shaped ``body``; whoever consumes them decides whether to
pace them in real time (the runner) or to take them as fast as it can (a benchmark). The sample
timestamps are ``start_ms + at``.

The model, per call:

- *Clients* join a little after the call starts, send one sample per ``interval`` and leave when the
  call ends: 2.x clients with ``controls.close`` on their last ``Samples``, 3.x clients with a
  ``CLIENT_LEFT`` client event. Legacy (2020) clients had no way to say goodbye: they stop, as
  dropped clients do, and the collector ends them by idle timeout.
- *Media* flows carry audio (Opus, 50 packets/s) and, for most clients, video (VP8, 30 fps). Their
  counters grow from the elapsed virtual time and the bitrate; loss, jitter and RTT are drawn
  around each client's network profile, impairments included.
- *Topologies*: ``p2p`` (2 clients, one peer connection each), ``mesh`` (one peer connection per
  pair of clients, one encoding per peer connection), ``sfu`` (a send and a receive peer connection
  per client, and SFU samples whose inbound pads carry the publisher's stream id and whose outbound
  pads the subscriber's sink id). 2.x clients report the SFU's stream ids on their outbound tracks
  and sink ids on their inbound ones, and the SFU rewrites the SSRC towards them; 3.x and legacy
  samples have no such fields, so towards them the SFU keeps the publisher's SSRC.

Everything random is drawn from one ``random.Random(seed)``, in a fixed order, so a seed (and a
``start_ms``) gives the same messages byte for byte.
"""

from __future__ import annotations

import heapq
import math
import random
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "GENERATIONS",
    "TOPOLOGIES",
    "TRANSPORTS",
    "Call",
    "Client",
    "Impairment",
    "Scenario",
    "Sfu",
    "Tick",
]

Topology = Literal["p2p", "mesh", "sfu"]
Generation = Literal["2", "3", "legacy"]
Transport = Literal["http", "websocket"]
Format = Literal["json", "protobuf", "gzip"]

TOPOLOGIES: tuple[Topology, ...] = ("p2p", "mesh", "sfu")
GENERATIONS: tuple[Generation, ...] = ("2", "3", "legacy")
TRANSPORTS: tuple[Transport, ...] = ("http", "websocket")
_FORMATS: tuple[Format, ...] = ("json", "protobuf", "gzip")
_MIXED_TOPOLOGIES: tuple[Topology, ...] = ("sfu", "mesh", "p2p")

#: Calls kept in ``Scenario.calls`` for inspection; an endless run forgets the oldest.
MAX_CALL_HISTORY = 10_000


# --------------------------------------------------------------------------------------------------
# Public value types
# --------------------------------------------------------------------------------------------------


_IMPAIRMENT_DEFAULTS = {"loss": 0.05, "rtt": 0.4, "frozen": 0.0, "drop": 0.0}


@dataclass(frozen=True)
class Impairment:
    """An impairment applied to a share of the clients.

    ``loss``: that fraction of packets lost on the client's network, both ways. ``rtt``: spikes of
    that many seconds of extra round-trip time, two sample periods out of five. ``frozen``: the
    client's incoming video stops decoding after its first sample (``framesDecoded`` stops
    increasing). ``drop``: the client vanishes between 30% and 70% of its call, without a goodbye
    (only in calls that end: a run with a duration, or a call duration).
    Clients are picked evenly (every 1/share-th client), so small runs get their share too.
    """

    kind: Literal["loss", "rtt", "frozen", "drop"]
    value: float
    share: float

    @classmethod
    def parse(cls, text: str) -> Impairment:
        """``loss=0.05@0.2``, ``rtt=0.4@0.1`` (or ``rtt=400ms@0.1``), ``frozen@0.1``, ``drop@0.1``;
        without ``@share`` every client is impaired, without ``=value`` the default applies."""
        body, at, share_text = text.strip().partition("@")
        name, eq, value_text = body.partition("=")
        kind = name.strip().lower()
        if kind not in _IMPAIRMENT_DEFAULTS:
            raise ValueError(f"unknown impairment {name!r} in {text!r} (known: loss, rtt, frozen, drop)")
        if eq and kind in ("frozen", "drop"):
            raise ValueError(f"{kind} takes no value: write {kind}@SHARE")
        try:
            share = float(share_text) if at else 1.0
            value = _impairment_value(kind, value_text.strip()) if eq else _IMPAIRMENT_DEFAULTS[kind]
        except ValueError:
            raise ValueError(f"cannot read impairment {text!r}: expected e.g. loss=0.05@0.2") from None
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"impairment share must be between 0 and 1, got {share} in {text!r}")
        if kind == "loss" and not 0.0 <= value < 1.0:
            raise ValueError(f"loss must be a fraction between 0 and 1, got {value} in {text!r}")
        if kind == "rtt" and value <= 0:
            raise ValueError(f"rtt must be positive seconds, got {value} in {text!r}")
        return cls(kind, value, share)  # type: ignore[arg-type]

    def __str__(self) -> str:
        value = f"={self.value:g}" if self.kind in ("loss", "rtt") else ""
        return f"{self.kind}{value}@{self.share:g}"


def _impairment_value(kind: str, text: str) -> float:
    if kind == "rtt" and text.endswith("ms"):
        return float(text[:-2]) / 1000
    if kind == "rtt" and text.endswith("s"):
        return float(text[:-1])
    return float(text)


@dataclass(frozen=True, slots=True)
class Tick:
    """One message a client or SFU sends: one HTTP request body, or one WebSocket frame.

    ``body`` is the JSON shape of the message: a 2.x ``Samples`` wrapper (``generation`` ``2``; SFUs
    too), a 3.x ``ClientSample`` (``3``) or a ``PeerConnectionSample`` (``legacy``). Every message
    holds exactly one sample. Encode it with :meth:`encode`.
    """

    at: float
    """Virtual seconds since the scenario started."""
    timestamp: int
    """The sample's timestamp, epoch milliseconds."""
    sender: str
    """Who sends: a client id, or ``sfu:<sfuId>``. Messages of one sender must be sent in order."""
    generation: Generation
    route: Literal["samples", "pcsamples"]
    service_id: str
    media_unit_id: str
    transport: Transport
    format: Format
    body: dict[str, Any]
    call_id: str | None = None
    client_id: str | None = None
    first: bool = False
    """The sender's first message (a client joins)."""
    last: bool = False
    """The sender sends nothing after this one (it leaves, is dropped, or the run ends)."""
    goodbye: bool = False
    """The message says the client leaves (2.x ``controls.close``, 3.x ``CLIENT_LEFT``)."""
    samples: int = 1

    @property
    def http_path(self) -> str:
        prefix = "/pcsamples" if self.route == "pcsamples" else "/rest/samples"
        return f"{prefix}/{self.service_id}/{self.media_unit_id}"

    @property
    def websocket_path(self) -> str:
        """The WebSocket URL path. A protobuf sender declares ``?format=protobuf``: told by its first
        bytes alone, a protobuf frame could pass for JSON."""
        if self.route == "pcsamples":
            return f"/pcsamples/{self.service_id}/{self.media_unit_id}"
        query = "?format=protobuf" if self.format == "protobuf" else ""
        return f"/samples/{self.service_id}/{self.media_unit_id}{query}"

    def encode(self, fmt: Format | None = None) -> Any:
        """The body on the wire (:class:`webrtc_observer.loadgen.Encoded`), in ``fmt`` or the tick's own format."""
        from ._wire import encode_body

        return encode_body(self.body, self.generation, fmt or self.format)


# --------------------------------------------------------------------------------------------------
# Simulation state
# --------------------------------------------------------------------------------------------------


_BROWSERS = (
    ("Chrome", "124.0.6367.91", "Blink"),
    ("Firefox", "125.0.2", "Gecko"),
    ("Safari", "17.4.1", "WebKit"),
    ("Edge", "124.0.2478.67", "Blink"),
)
_SYSTEMS = (("Windows", "10"), ("Mac OS", "14.4.1"), ("Linux", "6.5"), ("Android", "14"), ("iOS", "17.4"))
_NAMES = (
    "alice",
    "bob",
    "carol",
    "dave",
    "erin",
    "frank",
    "grace",
    "heidi",
    "ivan",
    "judy",
    "mallory",
    "niaj",
    "olivia",
    "peggy",
)
_ROOM_WORDS = ("standup", "retro", "sales", "support", "onboarding", "allhands", "review", "lecture", "clinic", "interview")
_TZ_HOURS = (0, 1, 2, -5, -8, 9, 10)
_SFU_RTT = 0.004  # the SFU is near: 4 ms between it and the client's access network
_AUDIO_CODEC = {
    "payloadType": 111,
    "mimeType": "audio/opus",
    "clockRate": 48000,
    "channels": 2,
    "sdpFmtpLine": "minptime=10;useinbandfec=1",
}
_VIDEO_CODEC = {"payloadType": 96, "mimeType": "video/VP8", "clockRate": 90000}


def _stochastic_round(value: float, rng: random.Random) -> int:
    whole = math.floor(value)
    return int(whole) + (1 if rng.random() < value - whole else 0)


class Client:
    """A simulated participant. Public attributes describe it; the rest is simulation state."""

    def __init__(self, scenario: Scenario, call: Call, n: int, index: int, start: float) -> None:
        rng = scenario.rng
        self.n = n
        """Global number of the client, in order of creation."""
        self.index = index
        self.call = call
        self.client_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        name = _NAMES[n % len(_NAMES)]
        self.user_id = f"{name}-{n}"
        self.generation: Generation = scenario._pick_generation(call, index)
        self.transport: Transport = scenario._pick_transport(n)
        self.format: Format = scenario._pick_format(n)
        self.start = start
        self.end = call.end
        self.camera = n % 5 != 4  # every fifth participant is audio-only
        self.browser = _BROWSERS[rng.randrange(len(_BROWSERS))]
        self.os = _SYSTEMS[rng.randrange(len(_SYSTEMS))]
        self.tz_hours = _TZ_HOURS[rng.randrange(len(_TZ_HOURS))]
        self.public_ip = f"203.0.113.{rng.randrange(1, 255)}"
        self.base_rtt = rng.uniform(0.005, 0.03)
        self.base_loss = rng.uniform(0.0002, 0.002)
        self.rtt_phase = rng.random() * 5
        self.mic_track_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        self.cam_track_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        # impairments
        self.impairments: frozenset[str] = frozenset()
        self.loss = 0.0
        self.rtt_spike = 0.0
        self.frozen = False
        self.dropped = False
        self.drop_at: float | None = None
        for k, imp in enumerate(scenario.impairments):
            if not scenario._impaired(n, k):
                continue
            self.impairments |= {imp.kind}
            if imp.kind == "loss":
                self.loss = imp.value
            elif imp.kind == "rtt":
                self.rtt_spike = imp.value
            elif imp.kind == "frozen":
                self.frozen = True
            elif imp.kind == "drop" and math.isfinite(self.end):
                self.dropped = True
                self.drop_at = start + rng.uniform(0.3, 0.7) * (self.end - start)
        self.freeze_at = start + scenario.interval * 0.5
        # state
        self.seq = 0
        self.joined = False
        self.departed = False
        self.left_at: float | None = None
        self.said_goodbye = False
        self.pcs: dict[Any, PeerConnectionState] = {}
        self.senders: dict[int, str] = {}
        """SSRC of each track this client received -> the client id of the track's sender."""
        self.send_transport_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        self.recv_transport_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))

    @property
    def active(self) -> bool:
        return self.joined and not self.departed

    @property
    def last_at(self) -> float:
        """When this client sends its last sample (planned)."""
        return self.drop_at if self.drop_at is not None else self.end

    def loss_rate(self) -> float:
        return 1 - (1 - self.base_loss) * (1 - self.loss)

    def spiking(self, t: float, interval: float) -> bool:
        return self.rtt_spike > 0 and math.floor((t - self.start) / interval + self.rtt_phase) % 5 < 2

    def rtt(self, t: float, interval: float, rng: random.Random) -> float:
        """This client's share of a round trip at ``t``: its access network, spikes included."""
        value = self.base_rtt * rng.uniform(0.85, 1.25)
        if self.spiking(t, interval):
            value += self.rtt_spike * rng.uniform(1.0, 1.25)
        return value

    def __repr__(self) -> str:
        return f"Client({self.user_id}, {self.generation}, {self.transport}/{self.format}, impaired={sorted(self.impairments)})"


class Call:
    """A simulated call: its ids, topology and clients."""

    def __init__(self, scenario: Scenario, number: int, start: float, end: float, topology: Topology) -> None:
        rng = scenario.rng
        self.number = number
        self.call_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        self.room_id = f"room-{_ROOM_WORDS[number % len(_ROOM_WORDS)]}-{number}-{rng.getrandbits(16):04x}"
        self.topology: Topology = topology
        self.start = start
        self.end = end
        self.clients: list[Client] = []
        self.sfu: Sfu | None = None

    @property
    def active(self) -> bool:
        return any(not c.departed for c in self.clients)

    def __repr__(self) -> str:
        return f"Call({self.room_id}, {self.topology}, {len(self.clients)} clients)"


class Sfu:
    """A simulated SFU (2.x SfuSamples); several calls may share one."""

    def __init__(self, scenario: Scenario, number: int, start: float) -> None:
        rng = scenario.rng
        self.sfu_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        self.number = number
        self.start = start
        self.ip = f"198.51.100.{10 + number}"
        self.transport: Transport = scenario._pick_transport(number + 1)
        self.format: Format = scenario._pick_format(number)
        self.calls: list[Call] = []
        self.seq = 0


class PeerConnectionState:
    """One peer connection of a client: the W3C ids of its transport and ICE pair, and its flows."""

    def __init__(self, scenario: Scenario, owner: Client, role: str, remote: Client | None, opened: float) -> None:
        rng = scenario.rng
        self.pc_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        self.owner = owner
        self.role = role  # "p2p", "send" or "recv"
        self.remote = remote
        self.opened = opened
        self.announced = False
        suffix = f"{rng.getrandbits(32):08x}"
        self.transport_id = f"T{suffix[:2]}"
        self.local_candidate_id = f"I{suffix}"
        self.remote_candidate_id = f"I{rng.getrandbits(32):08x}"
        self.pair_id = f"CP{self.local_candidate_id[1:5]}_{self.remote_candidate_id[1:5]}"
        self.local_port = rng.randrange(49152, 65535)
        self.remote_port = rng.randrange(49152, 65535) if remote is not None else rng.randrange(40000, 49999)
        self.ufrag = f"{rng.getrandbits(24):06x}"
        self.requests = 0


class Flow:
    """One RTP stream from a sender to a receiver, or one hop of it through the SFU.

    ``hop`` is ``p2p`` (client to client), ``up`` (publisher to SFU) or ``down`` (SFU to subscriber).
    The counters are cumulative, as getStats() reports them, and advance with virtual time.
    """

    def __init__(
        self, scenario: Scenario, kind: str, hop: str, sender: Client, receiver: Client | None, t0: float, ssrc: int, rx_ssrc: int
    ) -> None:
        rng = scenario.rng
        self.kind = kind
        self.hop = hop
        self.sender = sender
        self.receiver = receiver
        self.ssrc = ssrc
        self.rx_ssrc = rx_ssrc
        self.t = t0
        self.rx_track_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        self.stream_id = ""  # SFU producer id (up) / the publisher's producer id (down)
        self.sink_id = ""  # SFU consumer id (down)
        self.pad_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        self.limited = sender.loss > 0.02  # bandwidth-limited by its own lossy network
        if kind == "audio":
            self.bitrate = 32_000 * rng.uniform(0.9, 1.1)
            self.pps = 50.0
            self.fps = 0.0
            self.width = self.height = 0
            self.base_jitter = rng.uniform(0.002, 0.006)
        else:
            mesh = sender.call.topology == "mesh"
            if self.limited or mesh:
                self.bitrate, self.width, self.height = (450_000 if self.limited else 700_000), 640, 360
            else:
                self.bitrate, self.width, self.height = 1_500_000, 1280, 720
            self.bitrate *= rng.uniform(0.9, 1.1)
            self.pps = self.bitrate / (1100 * 8)
            self.fps = 24.0 if self.limited else 30.0
            self.base_jitter = rng.uniform(0.004, 0.012)
        self.payload = self.bitrate / 8 / self.pps
        self.header_size = 24 if kind == "audio" else 28
        # sender side
        self.packets_sent = self.bytes_sent = self.header_bytes_sent = 0
        self.retransmitted_packets = self.retransmitted_bytes = 0
        self.frames_encoded = self.key_frames = 0
        self.qp_sum = 0
        self.total_encode_time = 0.0
        self.limitation = {"none": 0.0, "cpu": 0.0, "bandwidth": 0.0, "other": 0.0}
        # receiver side
        self.packets_received = self.packets_lost = self.bytes_received = self.header_bytes_received = 0
        self.nack_count = self.pli_count = 0
        self.frames_received = self.frames_decoded = self.frames_dropped = 0
        self.decoded_fps = 0.0
        self.total_decode_time = self.total_inter_frame_delay = self.total_squared_inter_frame_delay = 0.0
        self.freeze_count = 0
        self.total_freezes_duration = 0.0
        self.jitter = self.base_jitter
        self.jitter_buffer_delay = 0.0
        self.jitter_buffer_emitted = 0
        self.audio_level = 0.0
        self.total_audio_energy = self.total_samples_duration = 0.0
        self.total_samples_received = self.concealed_samples = self.silent_concealed_samples = self.concealment_events = 0
        self.fraction_lost = 0.0
        # round trip (RTCP)
        self.total_rtt = 0.0
        self.rtt_measurements = 0
        self.reports = 0
        self.last_received_ts = 0.0
        self.rtt = round(self.path_rtt(t0, scenario), 4)
        # Media started flowing a moment before the first sample that shows it.
        self.t = t0 - 0.25 * scenario.interval
        self.advance(t0, scenario)

    def loss_rate(self) -> float:
        if self.hop == "up":
            return self.sender.loss_rate()
        if self.hop == "down":
            assert self.receiver is not None
            return self.receiver.loss_rate()
        assert self.receiver is not None
        return 1 - (1 - self.sender.loss_rate()) * (1 - self.receiver.loss_rate())

    def path_rtt(self, t: float, scenario: Scenario) -> float:
        rng, interval = scenario.rng, scenario.interval
        if self.hop == "up":
            return self.sender.rtt(t, interval, rng) + _SFU_RTT
        assert self.receiver is not None
        if self.hop == "down":
            return self.receiver.rtt(t, interval, rng) + _SFU_RTT
        return self.sender.rtt(t, interval, rng) + self.receiver.rtt(t, interval, rng)

    def spiking(self, t: float, interval: float) -> bool:
        ends = [self.sender] if self.hop == "up" else [self.receiver] if self.hop == "down" else [self.sender, self.receiver]
        return any(c is not None and c.spiking(t, interval) for c in ends)

    def advance(self, t: float, scenario: Scenario) -> None:
        """Move the counters to virtual time ``t`` (never backwards)."""
        dt = t - self.t
        if dt <= 0:
            return
        self.t = t
        rng = scenario.rng
        sent = _stochastic_round(self.pps * dt * rng.uniform(0.95, 1.05), rng)
        loss = self.loss_rate()
        lost = min(sent, _stochastic_round(sent * loss * rng.uniform(0.6, 1.4), rng))
        received = sent - lost
        sent_bytes = int(sent * self.payload * rng.uniform(0.9, 1.1))
        self.packets_sent += sent
        self.bytes_sent += sent_bytes
        self.header_bytes_sent += sent * self.header_size
        self.packets_lost += lost
        self.packets_received += received
        self.bytes_received += sent_bytes * received // sent if sent else 0
        self.header_bytes_received += received * self.header_size
        self.fraction_lost = round(lost / sent, 4) if sent else 0.0
        self.last_received_ts = scenario.timestamp(t) - rng.uniform(0, 20)
        spiking = self.spiking(t, scenario.interval)
        self.jitter = round(self.base_jitter * rng.uniform(0.7, 1.4) + loss * 0.2 + (0.015 if spiking else 0.0), 5)
        self.rtt = round(self.path_rtt(t, scenario), 4)
        measurements = max(1, round(dt))
        self.rtt_measurements += measurements
        self.total_rtt += self.rtt * measurements
        self.reports += measurements
        if self.kind == "audio":
            samples = int(48_000 * dt)
            self.total_samples_duration += dt
            self.total_samples_received += samples
            self.concealed_samples += lost * 960
            self.silent_concealed_samples += lost * 960 // 4
            self.concealment_events += 1 if lost else 0
            self.audio_level = round(rng.uniform(0.005, 0.35), 4)
            self.total_audio_energy += self.audio_level**2 * dt
            self.jitter_buffer_delay += samples * (0.04 + self.jitter * 2)
            self.jitter_buffer_emitted += samples
            return
        # video
        frames = _stochastic_round(self.fps * dt * rng.uniform(0.97, 1.03), rng)
        self.frames_encoded += frames
        self.qp_sum += int(frames * rng.uniform(20, 34))
        self.total_encode_time += frames * rng.uniform(0.003, 0.008)
        self.limitation["bandwidth" if self.limited else "none"] += dt
        self.retransmitted_packets += lost
        self.retransmitted_bytes += int(lost * self.payload)
        self.nack_count += lost
        if lost and rng.random() < 0.3:
            self.pli_count += 1
        self.key_frames = 1 + self.pli_count
        self.frames_received += frames
        receiver = self.receiver
        if receiver is not None and receiver.frozen and t > receiver.freeze_at:
            if self.freeze_count == 0:
                self.freeze_count = 1
            self.total_freezes_duration += dt
            self.decoded_fps = 0.0
            return
        dropped = min(frames, _stochastic_round(lost * 0.1, rng))
        decoded = frames - dropped
        self.frames_dropped += dropped
        self.frames_decoded += decoded
        self.decoded_fps = round(decoded / dt, 2)
        self.total_decode_time += decoded * rng.uniform(0.002, 0.006)
        self.total_inter_frame_delay += dt
        self.total_squared_inter_frame_delay += decoded * (1 / self.fps) ** 2
        self.jitter_buffer_delay += decoded * (0.05 + self.jitter * 2)
        self.jitter_buffer_emitted += decoded


# --------------------------------------------------------------------------------------------------
# The scenario
# --------------------------------------------------------------------------------------------------


_CALL, _CLIENT, _SFU = 0, 1, 2


class Scenario:
    """Calls of simulated clients (and SFUs), as the sequence of messages they send.

    ``calls`` calls run at once, each with ``clients_per_call`` clients (a ``p2p`` call always has
    2). Calls start staggered over the first sample period (at most a quarter of the run). With
    ``call_duration`` each call lasts about that long (±20%) and a new call takes its place; without
    it, calls last until the end of the run (``duration``; ``None`` runs until :meth:`stop`).

    ``topology``, ``schema``, ``transport`` and ``format`` take one value or ``mixed``: topologies
    rotate per call, sample generations per client within a call, transports and formats per client.
    """

    def __init__(
        self,
        *,
        calls: int = 10,
        clients_per_call: int = 3,
        topology: str = "mixed",
        schema: str = "mixed",
        transport: str = "http",
        format: str = "json",
        impairments: Sequence[Impairment | str] = (),
        interval: float = 5.0,
        duration: float | None = 60.0,
        call_duration: float | None = None,
        seed: int | None = None,
        start_ms: int | None = None,
        service_id: str = "loadgen",
        media_unit_id: str = "loadgen",
        sfu_media_unit_id: str | None = None,
    ) -> None:
        if calls < 1:
            raise ValueError("calls must be at least 1")
        if clients_per_call < 1:
            raise ValueError("clients_per_call must be at least 1")
        if interval <= 0:
            raise ValueError("interval must be positive")
        if duration is not None and duration <= 0:
            raise ValueError("duration must be positive (or None to run until stopped)")
        if call_duration is not None and call_duration <= 0:
            raise ValueError("call_duration must be positive")
        _check_choice("topology", topology, TOPOLOGIES)
        _check_choice("schema", schema, GENERATIONS)
        _check_choice("transport", transport, TRANSPORTS)
        _check_choice("format", format, _FORMATS)
        self.calls_at_once = calls
        self.clients_per_call = clients_per_call
        self.topology = topology
        self.schema = schema
        self.transport = transport
        self.format = format
        self.impairments = [i if isinstance(i, Impairment) else Impairment.parse(i) for i in impairments]
        self.interval = float(interval)
        self.duration = float(duration) if duration is not None else None
        self.call_duration = float(call_duration) if call_duration is not None else None
        self.seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
        self.rng = random.Random(self.seed)
        self.start_ms = int(start_ms if start_ms is not None else time.time() * 1000)
        self.service_id = service_id
        self.media_unit_id = media_unit_id
        self.sfu_media_unit_id = sfu_media_unit_id or f"{media_unit_id}-sfu"
        self._impairment_phase = [self.rng.random() for _ in self.impairments]

        self.calls: deque[Call] = deque(maxlen=MAX_CALL_HISTORY)
        """Every call started so far (the latest ``MAX_CALL_HISTORY``)."""
        self.sfus: list[Sfu] = []
        self.calls_started = 0
        self.clients_started = 0
        self._end = self.duration if self.duration is not None else math.inf
        self._heap: list[tuple[float, int, int, Any, int]] = []
        self._seq = 0
        self._flows: dict[tuple[Any, ...], Flow] = {}
        self._stopped = False
        ramp = min(self.interval, self._end / 4)
        for slot in range(calls):
            self._schedule(ramp * slot / calls, _CALL, slot, 0)

    # -- queries -----------------------------------------------------------------------------------
    @property
    def clients(self) -> list[Client]:
        """The clients of the calls in :attr:`calls`."""
        return [c for call in self.calls for c in call.clients]

    def active_calls(self) -> int:
        return sum(1 for call in self.calls if call.active and any(c.joined for c in call.clients))

    def active_clients(self) -> int:
        return sum(1 for call in self.calls for c in call.clients if c.active)

    def timestamp(self, at: float) -> int:
        return self.start_ms + round(at * 1000)

    # -- iteration ---------------------------------------------------------------------------------
    def ticks(self) -> Iterator[Tick]:
        """The messages, in order of ``at``; ends with the run (never, for an endless scenario)."""
        while self._heap and not self._stopped:
            at, _, kind, obj, k = heapq.heappop(self._heap)
            if kind == _CALL:
                self._start_call(obj, k, at)
            elif kind == _CLIENT:
                yield from self._client_tick(obj, k)
            else:
                yield from self._sfu_tick(obj, k)

    def stop(self, at: float) -> list[Tick]:
        """End the scenario at virtual time ``at``: the goodbyes of every client still in a call.

        :meth:`ticks` yields nothing more afterwards. Legacy clients, which cannot say goodbye,
        just stop.
        """
        self._stopped = True
        goodbyes: list[Tick] = []
        for call in self.calls:
            for client in call.clients:
                if not client.active:
                    continue
                if client.generation == "legacy":
                    self._depart(client, max(at, client.start))
                    continue
                client.end = max(at, client.start)
                goodbyes.extend(self._client_messages(client, client.end, last=True, goodbye=True))
                self._depart(client, client.end)
        self._heap.clear()
        return goodbyes

    # -- choices -----------------------------------------------------------------------------------
    def _pick_topology(self, number: int) -> Topology:
        if self.topology == "mixed":
            return _MIXED_TOPOLOGIES[number % len(_MIXED_TOPOLOGIES)]
        return self.topology  # type: ignore[return-value]

    def _pick_generation(self, call: Call, index: int) -> Generation:
        if self.schema == "mixed":
            return GENERATIONS[(call.number + index) % len(GENERATIONS)]
        return self.schema  # type: ignore[return-value]

    def _pick_transport(self, n: int) -> Transport:
        if self.transport == "mixed":
            return TRANSPORTS[n % len(TRANSPORTS)]
        return self.transport  # type: ignore[return-value]

    def _pick_format(self, n: int) -> Format:
        if self.format == "mixed":
            return _FORMATS[(n // 2) % len(_FORMATS)]
        return self.format  # type: ignore[return-value]

    def _impaired(self, n: int, k: int) -> bool:
        share, phase = self.impairments[k].share, self._impairment_phase[k]
        return math.floor((n + 1) * share + phase) > math.floor(n * share + phase)

    # -- scheduling --------------------------------------------------------------------------------
    def _schedule(self, at: float, kind: int, obj: Any, k: int) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, obj, k))

    def _start_call(self, slot: int, generation: int, at: float) -> None:
        if at + self.interval > self._end and generation > 0:
            return  # no room left for a whole sample period
        end = self._end
        if self.call_duration is not None:
            end = min(end, at + self.call_duration * self.rng.uniform(0.8, 1.2))
        number = self.calls_started
        call = Call(self, number, at, end, self._pick_topology(number))
        self.calls_started += 1
        self.calls.append(call)
        size = 2 if call.topology == "p2p" else self.clients_per_call
        offsets = sorted(self.rng.uniform(0, 0.5 * self.interval) for _ in range(size))
        for index, offset in enumerate(offsets):
            client = Client(self, call, self.clients_started, index, min(at + offset, end))
            self.clients_started += 1
            call.clients.append(client)
            self._schedule(client.start, _CLIENT, client, 0)
        if call.topology == "sfu":
            self._assign_sfu(call, at)
        if self.call_duration is not None and end < self._end:
            self._schedule(end + 0.5 * self.interval, _CALL, slot, generation + 1)

    def _assign_sfu(self, call: Call, at: float) -> None:
        wanted = max(1, math.ceil(self.calls_at_once / 4))
        if len(self.sfus) < wanted:
            sfu = Sfu(self, len(self.sfus), at)
            self.sfus.append(sfu)
            self._schedule(at, _SFU, sfu, 0)
        else:
            sfu = self.sfus[call.number % len(self.sfus)]
        sfu.calls = [c for c in sfu.calls if c.active]
        sfu.calls.append(call)
        call.sfu = sfu

    # -- clients -----------------------------------------------------------------------------------
    def _client_tick(self, client: Client, k: int) -> list[Tick]:
        t = client.start + k * self.interval
        next_t = client.start + (k + 1) * self.interval
        last = next_t > client.last_at
        goodbye = last and not client.dropped and math.isfinite(client.end) and client.generation != "legacy"
        messages = self._client_messages(client, t, last=last, goodbye=goodbye)
        if last:
            self._depart(client, t)
        else:
            self._schedule(next_t, _CLIENT, client, k + 1)
        return messages

    def _client_messages(self, client: Client, t: float, *, last: bool, goodbye: bool) -> list[Tick]:
        first = not client.joined
        client.joined = True
        self._update_pcs(client, t)
        if client.generation == "2":
            bodies = [_v2_samples(self, client, t, first, goodbye)]
        elif client.generation == "3":
            bodies = [_v3_sample(self, client, t, first, goodbye)]
        else:
            bodies = _legacy_samples(self, client, t, first)
        client.seq += 1
        if goodbye:
            client.said_goodbye = True
        route: Literal["samples", "pcsamples"] = "pcsamples" if client.generation == "legacy" else "samples"
        return [
            Tick(
                at=t,
                timestamp=self.timestamp(t),
                sender=client.client_id,
                generation=client.generation,
                route=route,
                service_id=self.service_id,
                media_unit_id=self.media_unit_id,
                transport=client.transport,
                format=client.format,
                body=body,
                call_id=client.call.call_id,
                client_id=client.client_id,
                first=first and i == 0,
                last=last and i == len(bodies) - 1,
                goodbye=goodbye and i == len(bodies) - 1,
            )
            for i, body in enumerate(bodies)
        ]

    def _depart(self, client: Client, t: float) -> None:
        client.departed = True
        client.left_at = t
        client.pcs.clear()
        for key in [key for key, f in self._flows.items() if f.sender is client or f.receiver is client]:
            del self._flows[key]

    def _update_pcs(self, client: Client, t: float) -> None:
        """Open peer connections towards peers that are in the call, close those towards peers gone."""
        call = client.call
        if call.topology == "sfu":
            for role in ("send", "recv"):
                if role not in client.pcs:
                    client.pcs[role] = PeerConnectionState(self, client, role, None, t)
            return
        for peer in call.clients:
            if peer is client:
                continue
            if peer.active and peer.n not in client.pcs:
                pc = client.pcs.pop("idle", None)  # the peer connection that was waiting for someone
                if pc is None:
                    pc = PeerConnectionState(self, client, "p2p", peer, t)
                else:
                    pc.role, pc.remote = "p2p", peer
                client.pcs[peer.n] = pc
            elif not peer.active and peer.n in client.pcs:
                del client.pcs[peer.n]
        if client.generation == "legacy" and not client.pcs:
            # The 2020 samples are per peer connection: a client alone has its offer's peer connection.
            client.pcs["idle"] = PeerConnectionState(self, client, "idle", None, t)

    def _kinds(self, client: Client) -> tuple[str, ...]:
        return ("audio", "video") if client.camera else ("audio",)

    def _flow(self, hop: str, kind: str, sender: Client, receiver: Client | None, t: float) -> Flow:
        key = (hop, kind, sender.n, receiver.n if receiver is not None else None)
        flow = self._flows.get(key)
        if flow is None:
            rng = self.rng
            ssrc = rng.randrange(1, 2**32)
            rx_ssrc = ssrc
            if hop == "down":
                up = self._flow("up", kind, sender, None, t)
                assert receiver is not None
                # The SFU rewrites SSRCs towards 2.x subscribers of 2.x publishers (their stream and sink
                # ids link the tracks); the other generations carry no SFU ids, so it keeps the SSRC.
                rewrite = receiver.generation == "2" and sender.generation == "2"
                ssrc = rx_ssrc = rng.randrange(1, 2**32) if rewrite else up.ssrc
                flow = Flow(self, kind, hop, sender, receiver, t, ssrc, rx_ssrc)
                flow.stream_id = up.stream_id
                flow.sink_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            else:
                flow = Flow(self, kind, hop, sender, receiver, t, ssrc, rx_ssrc)
                if hop == "up":
                    flow.stream_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            self._flows[key] = flow
            if receiver is not None:
                receiver.senders[flow.rx_ssrc] = sender.client_id
        flow.advance(t, self)
        return flow

    def outbound_flows(self, pc: PeerConnectionState, t: float) -> list[Flow]:
        """The flows a peer connection sends, advanced to ``t``."""
        client = pc.owner
        if pc.role in ("recv", "idle"):
            return []
        if pc.role == "send":
            return [self._flow("up", kind, client, None, t) for kind in self._kinds(client)]
        assert pc.remote is not None
        return [self._flow("p2p", kind, client, pc.remote, t) for kind in self._kinds(client)]

    def inbound_flows(self, pc: PeerConnectionState, t: float) -> list[Flow]:
        """The flows a peer connection receives, advanced to ``t``."""
        client = pc.owner
        if pc.role in ("send", "idle"):
            return []
        if pc.role == "recv":
            return [
                self._flow("down", kind, peer, client, t)
                for peer in client.call.clients
                if peer is not client and peer.active
                for kind in self._kinds(peer)
            ]
        assert pc.remote is not None
        return [self._flow("p2p", kind, pc.remote, client, t) for kind in self._kinds(pc.remote)]

    # -- SFUs --------------------------------------------------------------------------------------
    def _sfu_tick(self, sfu: Sfu, k: int) -> list[Tick]:
        t = sfu.start + k * self.interval
        next_t = sfu.start + (k + 1) * self.interval
        last = next_t > self._end
        if not last:
            self._schedule(next_t, _SFU, sfu, k + 1)
        body = {"sfuSamples": [_sfu_sample(self, sfu, t)]}
        first = sfu.seq == 0
        sfu.seq += 1
        return [
            Tick(
                at=t,
                timestamp=self.timestamp(t),
                sender=f"sfu:{sfu.sfu_id}",
                generation="2",
                route="samples",
                service_id=self.service_id,
                media_unit_id=self.sfu_media_unit_id,
                transport=sfu.transport,
                format=sfu.format,
                body=body,
                first=first,
                last=last,
            )
        ]


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value != "mixed" and value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)} or mixed, got {value!r}")


# --------------------------------------------------------------------------------------------------
# Samples, per generation
# --------------------------------------------------------------------------------------------------


def _score(flows: Sequence[Flow]) -> float:
    """A client-monitor-like score, 1..5, from loss and round trip."""
    if not flows:
        return 5.0
    worst_loss = max(f.fraction_lost for f in flows)
    worst_rtt = max(f.rtt for f in flows)
    frozen = any(f.kind == "video" and f.freeze_count for f in flows)
    score = 5.0 - min(2.5, worst_loss * 40) - min(1.5, max(0.0, worst_rtt - 0.15) * 4) - (1.0 if frozen else 0.0)
    return round(max(1.0, score), 2)


def _v2_samples(sc: Scenario, client: Client, t: float, first: bool, goodbye: bool) -> dict[str, Any]:
    """A 2.x ``Samples`` wrapper with one ClientSample, as client-monitor-js 2.x/3.x sends it."""
    ts = sc.timestamp(t)
    sample: dict[str, Any] = {
        "clientId": client.client_id,
        "callId": client.call.call_id,
        "roomId": client.call.room_id,
        "userId": client.user_id,
        "sampleSeq": client.seq,
        "timestamp": ts,
        "timeZoneOffsetInHours": client.tz_hours,
        "marker": "loadgen",
    }
    if first:
        browser, version, engine = client.browser
        sample["browser"] = {"name": browser, "version": version}
        sample["engine"] = {"name": engine, "version": version.split(".")[0]}
        sample["os"] = {"name": client.os[0], "version": client.os[1]}
        sample["platform"] = {"type": "mobile" if client.os[0] in ("Android", "iOS") else "desktop"}
        sample["mediaDevices"] = [
            {"id": "default", "kind": "audioinput", "label": "Default microphone"},
            {"id": "default", "kind": "audiooutput", "label": "Default speakers"},
        ] + ([{"id": "cam-0", "kind": "videoinput", "label": "HD camera"}] if client.camera else [])
        sample["iceServers"] = ["turns:turn.example.com:443?transport=tcp", "stun:stun.example.com:3478"]
        sample["customCallEvents"] = [{"name": "JOINED_ROOM", "value": client.call.room_id, "timestamp": ts}]
    transports: list[dict[str, Any]] = []
    pairs: list[dict[str, Any]] = []
    local_cands: list[dict[str, Any]] = []
    remote_cands: list[dict[str, Any]] = []
    codecs: list[dict[str, Any]] = []
    sources: dict[str, dict[str, Any]] = {}
    in_audio: list[dict[str, Any]] = []
    in_video: list[dict[str, Any]] = []
    out_audio: list[dict[str, Any]] = []
    out_video: list[dict[str, Any]] = []
    sfu = client.call.topology == "sfu"
    for pc in client.pcs.values():
        outbound = sc.outbound_flows(pc, t)
        inbound = sc.inbound_flows(pc, t)
        transports.append(
            _transport_stats(pc, outbound, inbound) | {"peerConnectionId": pc.pc_id, "transportId": pc.transport_id}
        )
        pairs.append(_pair_stats(pc, outbound, inbound, ts) | {"peerConnectionId": pc.pc_id, "candidatePairId": pc.pair_id})
        if not pc.announced:
            pc.announced = True
            local, remote = _candidates(pc, client, sc)
            local_cands.append(local | {"peerConnectionId": pc.pc_id})
            remote_cands.append(remote | {"peerConnectionId": pc.pc_id})
            # 2.x MediaCodecStats: payloadType is a string there
            codecs.extend(_v2_codec(f.kind, "encode") for f in outbound)
            codecs.extend(_v2_codec(kind, "decode") for kind in sorted({f.kind for f in inbound}))
        for f in outbound:
            track = _outbound_common(f) | {"peerConnectionId": pc.pc_id, "trackId": _local_track(client, f.kind)}
            if sfu:
                track["sfuStreamId"] = f.stream_id
            (out_audio if f.kind == "audio" else out_video).append(track)
            sources.setdefault(f.kind, _media_source(client, f))  # one source feeds every peer connection
        for f in inbound:
            track = _inbound_common(f, ts) | {"peerConnectionId": pc.pc_id, "trackId": f.rx_track_id}
            track.update(packetsSent=f.packets_sent, bytesSent=f.bytes_sent, remoteTimestamp=ts - 300, reportsSent=f.reports)
            if sfu:
                track["sfuSinkId"] = f.sink_id
            (in_audio if f.kind == "audio" else in_video).append(track)
    for key, value in (
        ("pcTransports", transports),
        ("iceCandidatePairs", pairs),
        ("iceLocalCandidates", local_cands),
        ("iceRemoteCandidates", remote_cands),
        ("codecs", codecs),
        ("mediaSources", list(sources.values())),
        ("inboundAudioTracks", in_audio),
        ("inboundVideoTracks", in_video),
        ("outboundAudioTracks", out_audio),
        ("outboundVideoTracks", out_video),
    ):
        if value:
            sample[key] = value
    wrapper: dict[str, Any] = {"clientSamples": [sample]}
    if goodbye:
        wrapper["controls"] = {"close": True}
    return wrapper


def _v3_sample(sc: Scenario, client: Client, t: float, first: bool, goodbye: bool) -> dict[str, Any]:
    """A 3.5 ``ClientSample``, as @observertc/client-monitor-js 4.x emits it."""
    ts = float(sc.timestamp(t))
    pcs = []
    all_flows: list[Flow] = []
    for pc in client.pcs.values():
        outbound = sc.outbound_flows(pc, t)
        inbound = sc.inbound_flows(pc, t)
        all_flows += outbound + inbound
        entry: dict[str, Any] = {"peerConnectionId": pc.pc_id, "score": _score(outbound + inbound)}
        inbound_rtps, remote_outbound, outbound_rtps, remote_inbound, sources, codecs = [], [], [], [], [], []
        seen_codecs: set[str] = set()
        for f in inbound:
            rtp_id = f"I{f.kind[0].upper()}{f.rx_ssrc}"
            codec = _codec_id(pc, f.kind)
            rtp = {"id": rtp_id, "timestamp": ts, "ssrc": f.rx_ssrc, "kind": f.kind, "trackIdentifier": f.rx_track_id}
            rtp |= {"transportId": pc.transport_id, "codecId": codec, "mid": _mid(f.kind), "remoteId": f"RO{rtp_id}"}
            rtp |= {k: v for k, v in _inbound_common(f, int(ts)).items() if k not in _V3_NOT_INBOUND_RTP}
            if f.kind == "video":
                rtp |= {"freezeCount": f.freeze_count, "totalFreezesDuration": round(f.total_freezes_duration, 3)}
            inbound_rtps.append(rtp)
            remote_outbound.append(
                {
                    "id": f"RO{rtp_id}",
                    "timestamp": ts,
                    "ssrc": f.rx_ssrc,
                    "kind": f.kind,
                    "localId": rtp_id,
                    "transportId": pc.transport_id,
                    "codecId": codec,
                    "packetsSent": f.packets_sent,
                    "bytesSent": f.bytes_sent,
                    "remoteTimestamp": ts - 300,
                    "reportsSent": f.reports,
                    "roundTripTime": f.rtt,
                    "totalRoundTripTime": round(f.total_rtt, 4),
                    "roundTripTimeMeasurements": f.rtt_measurements,
                }
            )
            if codec not in seen_codecs:
                seen_codecs.add(codec)
                codecs.append(_codec(f.kind) | {"id": codec, "timestamp": ts, "transportId": pc.transport_id})
        for f in outbound:
            rtp_id = f"O{f.kind[0].upper()}{f.ssrc}"
            source_id = f"S{f.kind[0].upper()}{pc.transport_id}"
            codec = _codec_id(pc, f.kind, "out")
            rtp = {"id": rtp_id, "timestamp": ts, "ssrc": f.ssrc, "kind": f.kind, "transportId": pc.transport_id}
            rtp |= {"codecId": codec, "mid": _mid(f.kind), "mediaSourceId": source_id, "remoteId": f"RI{rtp_id}"}
            common = _outbound_common(f)
            rtp |= {k: common[k] for k in _V3_OUTBOUND if k in common}
            if f.kind == "video":
                rtp["qualityLimitationDurations"] = {k: round(v, 3) for k, v in f.limitation.items()}
                rtp["scalabilityMode"] = "L1T3"
            outbound_rtps.append(rtp)
            remote_inbound.append(
                {
                    "id": f"RI{rtp_id}",
                    "timestamp": ts,
                    "ssrc": f.ssrc,
                    "kind": f.kind,
                    "localId": rtp_id,
                    "transportId": pc.transport_id,
                    "codecId": codec,
                    "packetsReceived": f.packets_received,
                    "packetsLost": f.packets_lost,
                    "fractionLost": f.fraction_lost,
                    "jitter": f.jitter,
                    "roundTripTime": f.rtt,
                    "totalRoundTripTime": round(f.total_rtt, 4),
                    "roundTripTimeMeasurements": f.rtt_measurements,
                }
            )
            source = _media_source(client, f)
            source = {"id": source_id, "timestamp": ts, "kind": f.kind, **{k: v for k, v in source.items() if k != "kind"}}
            sources.append(source)
            if codec not in seen_codecs:
                seen_codecs.add(codec)
                codecs.append(_codec(f.kind) | {"id": codec, "timestamp": ts, "transportId": pc.transport_id})
        transport = _transport_stats(pc, outbound, inbound)
        transport = {"id": pc.transport_id, "timestamp": ts, **{k: v for k, v in transport.items() if k in _V3_TRANSPORT}}
        pair = _pair_stats(pc, outbound, inbound, int(ts))
        pair = {"id": pc.pair_id, "timestamp": ts, **pair}
        local, remote = _candidates(pc, client, sc)
        candidates = [
            {"id": local["id"], "timestamp": ts, "transportId": pc.transport_id, **{k: v for k, v in local.items() if k != "id"}},
            {
                "id": remote["id"],
                "timestamp": ts,
                "transportId": pc.transport_id,
                **{k: v for k, v in remote.items() if k != "id"},
            },
        ]
        candidates[0]["usernameFragment"] = pc.ufrag
        for key, value in (
            ("inboundRtps", inbound_rtps),
            ("remoteOutboundRtps", remote_outbound),
            ("outboundRtps", outbound_rtps),
            ("remoteInboundRtps", remote_inbound),
            ("mediaSources", sources),
            ("codecs", codecs),
            ("iceTransports", [transport]),
            ("iceCandidatePairs", [pair]),
            ("iceCandidates", candidates),
            ("inboundTracks", [{"id": f.rx_track_id, "timestamp": ts, "kind": f.kind, "score": _score([f])} for f in inbound]),
            (
                "outboundTracks",
                [{"id": _local_track(client, f.kind), "timestamp": ts, "kind": f.kind, "score": _score([f])} for f in outbound],
            ),
        ):
            if value:
                entry[key] = value
        pcs.append(entry)
    sample: dict[str, Any] = {
        "clientId": client.client_id,
        "callId": client.call.call_id,
        "timestamp": ts,
        "score": _score(all_flows),
        "attachments": {"roomId": client.call.room_id, "userId": client.user_id, "marker": "loadgen"},
    }
    if pcs:
        sample["peerConnections"] = pcs
    events = []
    if first:
        events.append({"type": "CLIENT_JOINED", "timestamp": ts, "payload": {"userId": client.user_id}})
    if goodbye:
        events.append({"type": "CLIENT_LEFT", "timestamp": ts})
    if events:
        sample["clientEvents"] = events
    if any(f.kind == "video" and f.freeze_count and f.receiver is client for f in all_flows):
        frozen = next(f for f in all_flows if f.kind == "video" and f.freeze_count and f.receiver is client)
        sample["clientIssues"] = [{"type": "freezed-video-track", "timestamp": ts, "payload": {"trackId": frozen.rx_track_id}}]
    return sample


def _legacy_samples(sc: Scenario, client: Client, t: float, first: bool) -> list[dict[str, Any]]:
    """PeerConnectionSamples v20200114, one per peer connection, as the 2020 observer.js sent them."""
    ts = sc.timestamp(t)
    bodies = []
    for pc in client.pcs.values():
        outbound = sc.outbound_flows(pc, t)
        inbound = sc.inbound_flows(pc, t)
        local, remote = _candidates(pc, client, sc)
        pair = _pair_stats(pc, outbound, inbound, ts)
        receiver_stats: dict[str, Any] = {"inboundRTPStats": [], "tracks": []}
        for f in inbound:
            rtp_id = f"RTCInboundRTP{f.kind.title()}Stream_{f.rx_ssrc}"
            track_id = f"RTCMediaStreamTrack_receiver_{f.rx_ssrc}"
            common = _inbound_common(f, ts)
            rtp = {"id": rtp_id, "ssrc": f.rx_ssrc, "mediaType": f.kind, "isRemote": False, "trackId": track_id}
            rtp |= {"transportId": pc.transport_id, "codecId": _codec_id(pc, f.kind)}
            rtp |= {k: common[k] for k in _LEGACY_INBOUND if k in common}
            receiver_stats["inboundRTPStats"].append(rtp)
            track = {"id": track_id, "trackIdentifier": f.rx_track_id, "mediaType": f.kind, "remoteSource": True, "ended": False}
            track |= {k: common[k] for k in _LEGACY_RECEIVER_TRACK if k in common}
            if f.kind == "audio":
                track["samplesDuration"] = common["totalSamplesDuration"]
            receiver_stats["tracks"].append(track)
        sender_stats: dict[str, Any] = {"outboundRTPStats": [], "remoteInboundRTPStats": [], "mediaSources": [], "tracks": []}
        for f in outbound:
            rtp_id = f"RTCOutboundRTP{f.kind.title()}Stream_{f.ssrc}"
            source_id = f"RTC{f.kind.title()}Source_{f.kind[0]}"
            common = _outbound_common(f)
            rtp = {"id": rtp_id, "ssrc": f.ssrc, "mediaType": f.kind, "isRemote": False, "mediaSourceId": source_id}
            rtp |= {
                "transportId": pc.transport_id,
                "codecId": _codec_id(pc, f.kind, "out"),
                "remoteId": f"RTCRemoteInbound_{f.ssrc}",
            }
            rtp |= {k: common[k] for k in _LEGACY_OUTBOUND if k in common}
            sender_stats["outboundRTPStats"].append(rtp)
            sender_stats["remoteInboundRTPStats"].append(
                {
                    "id": f"RTCRemoteInbound_{f.ssrc}",
                    "ssrc": f.ssrc,
                    "mediaType": f.kind,
                    "localId": rtp_id,
                    "transportId": pc.transport_id,
                    "packetsLost": f.packets_lost,
                    "jitter": f.jitter,
                    "roundTripTime": f.rtt,
                }
            )
            source = _media_source(client, f)
            legacy_source = {"id": source_id, "mediaType": f.kind, "trackId": source["trackIdentifier"]}
            for key in ("audioLevel", "totalAudioEnergy", "totalSamplesDuration", "width", "height", "framesPerSecond"):
                if key in source:
                    legacy_source[key] = source[key]
            sender_stats["mediaSources"].append(legacy_source)
        body: dict[str, Any] = {
            "peerConnectionId": pc.pc_id,
            "browserId": client.client_id,  # the 2020 client's id: its browser fingerprint
            "callId": client.call.call_id,
            "userId": client.user_id,
            "timestamp": ts,
            "timeZoneOffsetInMinute": -60 * client.tz_hours,
            "marker": "loadgen",
            "iceStats": {"candidatePairs": [], "localCandidates": [], "remoteCandidates": []}
            if pc.role == "idle"
            else {
                "candidatePairs": [
                    {
                        "id": pc.pair_id,
                        "transportId": pc.transport_id,
                        "localCandidateId": local["id"],
                        "remoteCandidateId": remote["id"],
                        "state": "succeeded",
                        "nominated": True,
                        "writable": True,
                        **{k: pair[k] for k in _LEGACY_PAIR},
                    }
                ],
                "localCandidates": [_legacy_candidate(local, pc.transport_id, local_side=True)],
                "remoteCandidates": [_legacy_candidate(remote, pc.transport_id, local_side=False)],
            },
            "receiverStats": receiver_stats,
            "senderStats": sender_stats,
        }
        if first:
            browser, version, engine = client.browser
            body["clientDetails"] = {
                "browser": {"name": browser, "version": version},
                "os": {"name": client.os[0], "version": client.os[1]},
                "engine": {"name": engine, "version": version.split(".")[0]},
            }
            body["deviceList"] = [{"deviceId": "default", "kind": "audioinput", "label": "Default microphone"}]
        bodies.append(body)
    return bodies


def _sfu_sample(sc: Scenario, sfu: Sfu, t: float) -> dict[str, Any]:
    """A 2.x SfuSample, as sfu-monitor-js reports a mediasoup-like SFU: transports, RTP pads by stream/sink id."""
    transports, inbound_pads, outbound_pads = [], [], []
    for call in sfu.calls:
        members = [c for c in call.clients if c.active]
        for client in members:
            up = [sc._flow("up", kind, client, None, t) for kind in sc._kinds(client)]
            down = [sc._flow("down", kind, peer, client, t) for peer in members if peer is not client for kind in sc._kinds(peer)]
            for transport_id, flows, direction in ((client.send_transport_id, up, "in"), (client.recv_transport_id, down, "out")):
                received = sum(f.packets_received for f in flows) if direction == "in" else 0
                sent = sum(f.packets_sent for f in flows) if direction == "out" else 0
                transports.append(
                    {
                        "transportId": transport_id,
                        "internal": False,
                        "dtlsState": "connected",
                        "iceState": "connected",
                        "iceRole": "controlled",
                        "protocol": "udp",
                        "localAddress": sfu.ip,
                        "localPort": 40000 + client.n % 9999,
                        "remoteAddress": client.public_ip,
                        "remotePort": 50000 + client.n % 9999,
                        "rtpPacketsReceived": received,
                        "rtpBytesReceived": sum(f.bytes_received for f in flows) if direction == "in" else 0,
                        "rtpPacketsLost": sum(f.packets_lost for f in flows) if direction == "in" else 0,
                        "rtpPacketsSent": sent,
                        "rtpBytesSent": sum(f.bytes_sent for f in flows) if direction == "out" else 0,
                    }
                )
            for f in up:
                codec = _codec(f.kind)
                inbound_pads.append(
                    {
                        "padId": f.pad_id,
                        "streamId": f.stream_id,
                        "transportId": client.send_transport_id,
                        "ssrc": f.ssrc,
                        "mediaType": f.kind,
                        "mimeType": codec["mimeType"],
                        "payloadType": codec["payloadType"],
                        "clockRate": codec["clockRate"],
                        "internal": False,
                        "packetsReceived": f.packets_received,
                        "packetsLost": f.packets_lost,
                        "bytesReceived": f.bytes_received,
                        "fractionLost": f.fraction_lost,
                        "jitter": f.jitter,
                        "nackCount": f.nack_count,
                        "pliCount": f.pli_count,
                        "rtcpRrSent": f.reports,
                        "rtcpSrReceived": f.reports,
                    }
                )
            for f in down:
                codec = _codec(f.kind)
                outbound_pads.append(
                    {
                        "padId": f.pad_id,
                        "streamId": f.stream_id,
                        "sinkId": f.sink_id,
                        "transportId": client.recv_transport_id,
                        "ssrc": f.ssrc,
                        "mediaType": f.kind,
                        "mimeType": codec["mimeType"],
                        "payloadType": codec["payloadType"],
                        "clockRate": codec["clockRate"],
                        "internal": False,
                        "packetsSent": f.packets_sent,
                        "bytesSent": f.bytes_sent,
                        "packetsLost": f.packets_lost,
                        "fractionLost": f.fraction_lost,
                        "roundTripTime": f.rtt,
                        "packetsRetransmitted": f.retransmitted_packets,
                        "nackCount": f.nack_count,
                        "pliCount": f.pli_count,
                        "rtcpRrReceived": f.reports,
                        "rtcpSrSent": f.reports,
                    }
                )
    sample: dict[str, Any] = {"sfuId": sfu.sfu_id, "timestamp": sc.timestamp(t), "timeZoneOffsetInHours": 0, "marker": "loadgen"}
    for key, value in (("transports", transports), ("inboundRtpPads", inbound_pads), ("outboundRtpPads", outbound_pads)):
        if value:
            sample[key] = value
    return sample


# -- shared pieces (2.x field names, which are the W3C names) ---------------------------------------

_V3_OUTBOUND = (
    "bytesSent", "packetsSent", "headerBytesSent", "retransmittedPacketsSent", "retransmittedBytesSent", "nackCount",
    "targetBitrate", "active", "framesEncoded", "framesSent", "keyFramesEncoded", "framesPerSecond", "frameWidth",
    "frameHeight", "qpSum", "totalEncodeTime", "hugeFramesSent", "pliCount", "firCount", "qualityLimitationReason",
    "qualityLimitationResolutionChanges", "encoderImplementation",
)  # fmt: skip
_V3_NOT_INBOUND_RTP = frozenset({"roundTripTime", "totalRoundTripTime", "roundTripTimeMeasurements"})  # remote-outbound's
_V3_TRANSPORT = (
    "packetsSent", "packetsReceived", "bytesSent", "bytesReceived", "iceRole", "iceState", "dtlsState", "dtlsRole",
    "selectedCandidatePairId", "selectedCandidatePairChanges", "srtpCipher", "tlsVersion", "dtlsCipher",
    "iceLocalUsernameFragment",
)  # fmt: skip
_LEGACY_INBOUND = (
    "packetsReceived", "packetsLost", "bytesReceived", "headerBytesReceived", "jitter", "lastPacketReceivedTimestamp",
    "framesDecoded", "keyFramesDecoded", "qpSum", "totalDecodeTime", "totalInterFrameDelay", "totalSquaredInterFrameDelay",
    "nackCount", "pliCount", "firCount", "decoderImplementation",
)  # fmt: skip
_LEGACY_RECEIVER_TRACK = (
    "jitterBufferDelay", "jitterBufferEmittedCount", "totalSamplesReceived", "concealedSamples", "silentConcealedSamples",
    "concealmentEvents", "framesDecoded", "framesDropped", "framesReceived", "frameWidth", "frameHeight",
)  # fmt: skip
_LEGACY_OUTBOUND = (
    "packetsSent", "bytesSent", "headerBytesSent", "retransmittedPacketsSent", "retransmittedBytesSent", "nackCount",
    "framesEncoded", "keyFramesEncoded", "qpSum", "totalEncodeTime", "qualityLimitationReason",
    "qualityLimitationResolutionChanges", "pliCount", "firCount", "encoderImplementation",
)  # fmt: skip
_LEGACY_PAIR = ("currentRoundTripTime", "totalRoundTripTime", "availableOutgoingBitrate", "bytesSent", "bytesReceived")


def _mid(kind: str) -> str:
    return "0" if kind == "audio" else "1"


def _codec(kind: str) -> dict[str, Any]:
    return dict(_AUDIO_CODEC if kind == "audio" else _VIDEO_CODEC)


def _v2_codec(kind: str, codec_type: str) -> dict[str, Any]:
    codec = _codec(kind)
    return {**codec, "payloadType": str(codec["payloadType"]), "codecType": codec_type}


def _codec_id(pc: PeerConnectionState, kind: str, direction: str = "in") -> str:
    codec = _AUDIO_CODEC if kind == "audio" else _VIDEO_CODEC
    return f"C{'I' if direction == 'in' else 'O'}{pc.transport_id}_{codec['payloadType']}"


def _local_track(client: Client, kind: str) -> str:
    return client.mic_track_id if kind == "audio" else client.cam_track_id


def _outbound_common(f: Flow) -> dict[str, Any]:
    """An outbound-rtp (with its remote-inbound-rtp and media source) in 2.x names."""
    out: dict[str, Any] = {
        "ssrc": f.ssrc,
        "active": True,
        "packetsSent": f.packets_sent,
        "bytesSent": f.bytes_sent,
        "headerBytesSent": f.header_bytes_sent,
        "targetBitrate": int(f.bitrate),
        "nackCount": f.nack_count,
        "retransmittedPacketsSent": f.retransmitted_packets,
        "retransmittedBytesSent": f.retransmitted_bytes,
        "packetsReceived": f.packets_received,
        "packetsLost": f.packets_lost,
        "fractionLost": f.fraction_lost,
        "jitter": f.jitter,
        "roundTripTime": f.rtt,
        "totalRoundTripTime": round(f.total_rtt, 4),
        "roundTripTimeMeasurements": f.rtt_measurements,
        "encoderImplementation": "libopus" if f.kind == "audio" else "libvpx",
    }
    if f.kind == "audio":
        out |= {
            "audioLevel": f.audio_level or 0.1,
            "totalAudioEnergy": round(f.total_audio_energy, 5),
            "totalSamplesDuration": round(f.total_samples_duration, 3),
        }
        return out
    out |= {
        "framesEncoded": f.frames_encoded,
        "framesSent": f.frames_encoded,
        "keyFramesEncoded": f.key_frames,
        "framesPerSecond": f.fps,
        "frameWidth": f.width,
        "frameHeight": f.height,
        "qpSum": f.qp_sum,
        "totalEncodeTime": round(f.total_encode_time, 4),
        "hugeFramesSent": 0,
        "pliCount": f.pli_count,
        "firCount": 0,
        "qualityLimitationReason": "bandwidth" if f.limited else "none",
        "qualityLimitationResolutionChanges": 1 if f.limited else 0,
        "qualityLimitationDurationNone": round(f.limitation["none"], 3),
        "qualityLimitationDurationCPU": round(f.limitation["cpu"], 3),
        "qualityLimitationDurationBandwidth": round(f.limitation["bandwidth"], 3),
        "qualityLimitationDurationOther": round(f.limitation["other"], 3),
        "width": f.width,
        "height": f.height,
        "frames": f.frames_encoded,
    }
    return out


def _inbound_common(f: Flow, ts: int) -> dict[str, Any]:
    """An inbound-rtp (with its track stats) in 2.x names."""
    out: dict[str, Any] = {
        "ssrc": f.rx_ssrc,
        "packetsReceived": f.packets_received,
        "packetsLost": f.packets_lost,
        "bytesReceived": f.bytes_received,
        "headerBytesReceived": f.header_bytes_received,
        "jitter": f.jitter,
        "lastPacketReceivedTimestamp": int(f.last_received_ts) if f.packets_received else ts,
        "jitterBufferDelay": round(f.jitter_buffer_delay, 3),
        "jitterBufferEmittedCount": f.jitter_buffer_emitted,
        "roundTripTime": f.rtt,
        "totalRoundTripTime": round(f.total_rtt, 4),
        "roundTripTimeMeasurements": f.rtt_measurements,
        "decoderImplementation": "libopus" if f.kind == "audio" else "libvpx",
    }
    if f.kind == "audio":
        out |= {
            "audioLevel": f.audio_level,
            "totalAudioEnergy": round(f.total_audio_energy, 5),
            "totalSamplesDuration": round(f.total_samples_duration, 3),
            "totalSamplesReceived": f.total_samples_received,
            "concealedSamples": f.concealed_samples,
            "silentConcealedSamples": f.silent_concealed_samples,
            "concealmentEvents": f.concealment_events,
        }
        return out
    out |= {
        "framesReceived": f.frames_received,
        "framesDecoded": f.frames_decoded,
        "framesDropped": f.frames_dropped,
        "keyFramesDecoded": f.key_frames,
        "framesPerSecond": f.decoded_fps,
        "frameWidth": f.width,
        "frameHeight": f.height,
        "qpSum": f.qp_sum,
        "totalDecodeTime": round(f.total_decode_time, 4),
        "totalInterFrameDelay": round(f.total_inter_frame_delay, 4),
        "totalSquaredInterFrameDelay": round(f.total_squared_inter_frame_delay, 5),
        "nackCount": f.nack_count,
        "pliCount": f.pli_count,
        "firCount": 0,
    }
    return out


def _media_source(client: Client, f: Flow) -> dict[str, Any]:
    if f.kind == "audio":
        return {
            "trackIdentifier": client.mic_track_id,
            "kind": "audio",
            "audioLevel": f.audio_level or 0.1,
            "totalAudioEnergy": round(f.total_audio_energy, 5),
            "totalSamplesDuration": round(f.total_samples_duration, 3),
            "echoReturnLoss": -30.0,
        }
    return {
        "trackIdentifier": client.cam_track_id,
        "kind": "video",
        "width": 1280,
        "height": 720,
        "frames": f.frames_encoded,
        "framesPerSecond": 30.0,
    }


def _transport_stats(pc: PeerConnectionState, outbound: Sequence[Flow], inbound: Sequence[Flow]) -> dict[str, Any]:
    return {
        "packetsSent": sum(f.packets_sent for f in outbound),
        "packetsReceived": sum(f.packets_received for f in inbound),
        "bytesSent": sum(f.bytes_sent + f.header_bytes_sent for f in outbound),
        "bytesReceived": sum(f.bytes_received + f.header_bytes_received for f in inbound),
        "iceRole": "controlling" if pc.role != "recv" else "controlled",
        "iceState": "connected",
        "dtlsState": "connected",
        "dtlsRole": "client" if pc.role != "recv" else "server",
        "selectedCandidatePairId": pc.pair_id,
        "selectedCandidatePairChanges": 1,
        "srtpCipher": "AES_CM_128_HMAC_SHA1_80",
        "tlsVersion": "FEFD",
        "dtlsCipher": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "iceLocalUsernameFragment": pc.ufrag,
    }


def _pair_stats(pc: PeerConnectionState, outbound: Sequence[Flow], inbound: Sequence[Flow], ts: int) -> dict[str, Any]:
    flows = [*outbound, *inbound]
    rtt = max((f.rtt for f in flows), default=0.0) or round(0.02 + pc.owner.base_rtt, 4)
    pc.requests += 1
    return {
        "transportId": pc.transport_id,
        "localCandidateId": pc.local_candidate_id,
        "remoteCandidateId": pc.remote_candidate_id,
        "state": "succeeded",
        "nominated": True,
        "packetsSent": sum(f.packets_sent for f in outbound),
        "packetsReceived": sum(f.packets_received for f in inbound),
        "bytesSent": sum(f.bytes_sent for f in outbound),
        "bytesReceived": sum(f.bytes_received for f in inbound),
        "currentRoundTripTime": rtt,
        "totalRoundTripTime": round(sum(f.total_rtt for f in flows) / max(1, len(flows)), 4),
        "availableOutgoingBitrate": float(round(sum(f.bitrate for f in outbound) * 1.3) or 300_000),
        "requestsSent": pc.requests,
        "responsesReceived": pc.requests,
        "requestsReceived": pc.requests,
        "responsesSent": pc.requests,
        "consentRequestsSent": pc.requests,
        "lastPacketSentTimestamp": ts,
        "lastPacketReceivedTimestamp": ts,
    }


def _candidates(pc: PeerConnectionState, client: Client, sc: Scenario) -> tuple[dict[str, Any], dict[str, Any]]:
    local = {
        "id": pc.local_candidate_id,
        "address": client.public_ip,
        "port": pc.local_port,
        "protocol": "udp",
        "candidateType": "srflx",
        "priority": 1686052607,
    }
    if pc.remote is not None:
        remote_ip, remote_type = pc.remote.public_ip, "srflx"
    else:
        sfu = client.call.sfu
        remote_ip, remote_type = (sfu.ip if sfu is not None else "198.51.100.1"), "host"
    remote = {
        "id": pc.remote_candidate_id,
        "address": remote_ip,
        "port": pc.remote_port,
        "protocol": "udp",
        "candidateType": remote_type,
        "priority": 2122260223 if remote_type == "host" else 1686052607,
    }
    return local, remote


def _legacy_candidate(cand: dict[str, Any], transport_id: str, *, local_side: bool) -> dict[str, Any]:
    out = {
        "id": cand["id"],
        "ip": cand["address"],
        "port": cand["port"],
        "protocol": cand["protocol"],
        "candidateType": cand["candidateType"],
        "priority": cand["priority"],
        "transportId": transport_id,
        "isRemote": not local_side,
    }
    if local_side:
        out["networkType"] = "wifi"
    return out
