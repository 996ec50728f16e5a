"""The workloads of ``bench/pipeline.py``: what the clients send, built before any clock starts.

- :func:`mesh`: ``webrtc_observer.loadgen.Scenario``'s synthetic calls (P2P with 2 clients a call, a
  mesh otherwise: with 4, each client has 3 peer connections and 12 tracks), realistic counters.
- :func:`capture`: a real Chromium P2P call, ``tests/fixtures/browser-cm3-rest.json`` (alice and
  bob, client-monitor-js 3.11.1, 2.x ``Samples`` bodies), fanned out to N calls x T ticks. Each call
  gets its own callId and clientIds, and its own peer connection, track and ICE candidate ids and
  SSRCs (same shapes: UUIDs stay UUIDs, Chromium's ``I…``/``CP…_…`` ids stay so; transport ``T01``
  is per peer connection in Chromium and stays). A client's first tick is its first captured
  sample (codecs, certificates, candidates, join events), its last tick its last captured one
  (bob's CLIENT_LEFT, alice's ``controls.close``), and the ticks between cycle through the other
  captured samples. Across a jump in the capture (a new cycle) timestamps and cumulative counters
  carry on from where they were, by the increment the capture had into that sample; gauges
  (jitter, RTT, audio level, frame rate...) are as captured. Calls start staggered over one second.
- :func:`decode_frames`: 3.x ``ClientSample`` frames for the decode measurement: loadgen's mesh
  samples (about 20 KB) and the real ``tests/fixtures/browser-cm4-ws.json`` frames (about 10 KB).

:func:`check_rising` verifies that each client's timestamps ascend and its counters never fall.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CAPTURE = ROOT / "tests" / "fixtures" / "browser-cm3-rest.json"
CAPTURE_V3 = ROOT / "tests" / "fixtures" / "browser-cm4-ws.json"


@dataclass
class Message:
    sender: str
    key: tuple[str, int]
    """(clientId, sample timestamp): how a report is traced back to the sample it came from."""
    body: dict[str, Any]
    frame: str


def client_samples(messages: list[Message]) -> Iterator[dict[str, Any]]:
    for m in messages:
        yield from m.body.get("clientSamples", [m.body])


def by_sender(messages: list[Message]) -> dict[str, list[Message]]:
    out: dict[str, list[Message]] = {}
    for m in messages:
        out.setdefault(m.sender, []).append(m)
    return out


def _message(body: dict[str, Any]) -> Message | None:
    sample = body["clientSamples"][0] if "clientSamples" in body else body
    if "clientId" not in sample:
        return None
    return Message(sample["clientId"], (sample["clientId"], int(sample["timestamp"])), body, json.dumps(body))


# -- loadgen's synthetic calls -------------------------------------------------------------------


def mesh(calls: int, clients_per_call: int, ticks: int, seed: int, schema: str = "2") -> list[Message]:
    """The client messages of a loadgen scenario, in send order (schema 2: a ``Samples`` wrapper each)."""
    from webrtc_observer.loadgen import Scenario

    topology = "p2p" if clients_per_call == 2 else "mesh"
    scenario = Scenario(
        calls=calls, clients_per_call=clients_per_call, topology=topology, schema=schema, interval=1, duration=ticks, seed=seed
    )
    out = []
    for tick in scenario.ticks():
        if isinstance(tick.body, dict) and not tick.sender.startswith("sfu:"):
            message = _message(tick.body)
            if message is not None:
                out.append(message)
    return out


# -- a real call, fanned out ---------------------------------------------------------------------

_COUNTER = re.compile(
    r"^(?:packets|bytes|headerBytes|retransmitted|fec|total|jitterBuffer|concealed|silentConcealed|concealment"
    r"|inserted|removed|synthesized|requests|responses|consentRequests|reportsSent|roundTripTimeMeasurements"
    r"|qpSum|keyFrames|hugeFrames|frames(?!PerSecond)|qualityLimitationDuration|qualityLimitationResolutionChanges"
    r"|selectedCandidatePairChanges|messages)|Count$"
)
"""Cumulative stats (W3C counters and totals), as they appear in the capture's records."""
_TIMESTAMP = re.compile(r"^timestamp$|Timestamp$")
_RECORD_IDENTITY = ("peerConnectionId", "ssrc", "trackIdentifier", "candidatePairId", "transportId", "id")
_UUID_FIELDS = frozenset({"peerConnectionId", "trackId", "mediaTrackId", "trackIdentifier"})
_CANDIDATE_FIELDS = frozenset({"id", "localCandidateId", "remoteCandidateId", "candidatePairId", "selectedCandidatePairId"})


def _captured(path: Path = CAPTURE) -> tuple[dict[str, list[dict[str, Any]]], dict[int, dict[str, Any]]]:
    """Each client's captured samples in order, and what else their message carried (``controls``), by id()."""
    doc = json.loads(path.read_text())
    samples: dict[str, list[dict[str, Any]]] = {}
    extras: dict[int, dict[str, Any]] = {}
    for message in doc["messages"]:
        body = json.loads(message["body"])
        for sample in body.pop("clientSamples"):
            samples.setdefault(sample["clientId"], []).append(sample)
            extras[id(sample)] = body
    return samples, extras


def _plan(length: int, ticks: int) -> list[int]:
    """Indexes into a client's ``length`` captured samples for ``ticks`` ticks: first, cycled middle, last."""
    if ticks < 2 or length < 3:
        raise ValueError("the capture fan-out needs at least 2 ticks, and 3 captured samples per client")
    middle = list(range(1, length - 1))
    return [0, *(middle[i % len(middle)] for i in range(ticks - 2)), length - 1]


def _counters(sample: dict[str, Any]) -> dict[tuple[Any, ...], float]:
    """The cumulative counters of a sample's records: {(list, record identity, field): value}."""
    out: dict[tuple[Any, ...], float] = {}
    for name, records in sample.items():
        if not isinstance(records, list):
            continue
        seen: set[tuple[Any, ...]] = set()
        for record in records:
            if not isinstance(record, dict):
                continue
            identity = _identity(name, record, seen)
            for field, value in record.items():
                if _is_number(value) and _COUNTER.search(field):
                    out[(*identity, field)] = value
    return out


def _identity(name: str, record: dict[str, Any], seen: set[tuple[Any, ...]]) -> tuple[Any, ...]:
    """A record's identity within its sample: its ids, and which of the records with those ids it is."""
    identity = (name, *(record.get(f) for f in _RECORD_IDENTITY))
    n = 0
    while (*identity, n) in seen:
        n += 1
    seen.add((*identity, n))
    return (*identity, n)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _continued(captured: list[dict[str, Any]], plan: list[int]) -> list[dict[str, Any]]:
    """The captured samples of ``plan`` with their timestamps and counters carried on across jumps.

    Where the plan goes from sample p to a sample q that did not follow p in the capture, every
    timestamp and counter moves on from p's by what the capture had between q - 1 and q (a counter
    missing from a sample keeps its last value; one that first appears at q starts from 0).
    """
    known = []  # known[i]: every counter's last value up to captured sample i
    for sample in captured:
        known.append({**(known[-1] if known else {}), **_counters(sample)})
    offsets: dict[tuple[Any, ...], float] = {}
    shift = 0
    out = []
    previous: int | None = None
    for i, q in enumerate(plan):
        if previous is not None and q != previous + 1:
            shift += captured[previous]["timestamp"] - captured[q - 1]["timestamp"]
            for key, value in known[previous].items():
                offsets[key] = offsets.get(key, 0) + value - known[q - 1].get(key, 0)
        out.append(_shifted(captured[q], offsets, shift, seq=i))
        previous = q
    return out


def _shifted(sample: dict[str, Any], offsets: dict[tuple[Any, ...], float], shift: int, seq: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in sample.items():
        if isinstance(value, list):
            seen: set[tuple[Any, ...]] = set()
            value = [_shifted_record(_identity(name, r, seen), r, offsets, shift) if isinstance(r, dict) else r for r in value]
        elif _is_number(value) and _TIMESTAMP.search(name):
            value += shift
        out[name] = value
    out["sampleSeq"] = seq
    return out


def _shifted_record(
    identity: tuple[Any, ...], record: dict[str, Any], offsets: dict[tuple[Any, ...], float], shift: int
) -> dict[str, Any]:
    out = dict(record)
    for field, value in record.items():
        if not _is_number(value):
            continue
        if _TIMESTAMP.search(field):
            out[field] = value + shift
        elif _COUNTER.search(field):
            out[field] = value + offsets.get((*identity, field), 0)
    return out


class _CallIds:
    """The ids of call number ``index`` of the fan-out: same shapes as the capture's, unique per call."""

    def __init__(self, index: int, call_id: str, shift: int) -> None:
        self.index = index
        self.call_id = f"{call_id}-{index:04d}"
        self.shift = shift
        self._tokens: dict[str, str] = {}

    def rewrite(self, value: Any, field: str = "") -> Any:
        if isinstance(value, dict):
            return {k: self.rewrite(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self.rewrite(v, field) for v in value]
        if field == "callId":
            return self.call_id
        if field in ("clientId", "roomId"):
            return f"{value}-{self.index:04d}"
        if field in _UUID_FIELDS and isinstance(value, str) and len(value) == 36:
            return f"{value[:24]}{self.index:012x}"  # still a UUID, its last group the call's number
        if field in _CANDIDATE_FIELDS and isinstance(value, str):
            return self._candidate(value)
        if field == "ssrc" and _is_number(value):
            return (value + self.index * 2654435761) % 2**32
        if _is_number(value) and _TIMESTAMP.search(field):
            return value + self.shift
        return value

    def _candidate(self, value: str) -> str:
        """Chromium's ``I<8 chars>`` candidate ids and ``CP<local>_<remote>`` pair ids, tokens replaced."""
        if value.startswith("CP") and "_" in value:
            local, remote = value[2:].split("_", 1)
            return f"CP{self._token(local)}_{self._token(remote)}"
        if value.startswith("I"):
            return "I" + self._token(value[1:])
        return value

    def _token(self, token: str) -> str:
        found = self._tokens.get(token)
        if found is None:
            digest = hashlib.blake2b(f"{token}/{self.index}".encode(), digest_size=12).digest()
            found = self._tokens[token] = base64.b64encode(digest).decode()[: len(token)]
        return found


def capture(calls: int, ticks: int, start_ms: int | None = None, path: Path = CAPTURE) -> list[Message]:
    """The capture's call fanned out to ``calls`` calls of ``ticks`` ticks a client, in send order."""
    captured, extras = _captured(path)
    first_ts = min(s[0]["timestamp"] for s in captured.values())
    start = int(start_ms if start_ms is not None else time.time() * 1000)
    timelines = {}
    for client, samples in captured.items():
        plan = _plan(len(samples), ticks)
        timelines[client] = [(sample, extras[id(samples[q])]) for sample, q in zip(_continued(samples, plan), plan, strict=True)]
    call_id = next(iter(captured.values()))[0]["callId"]
    call_ids = [_CallIds(i, call_id, start - first_ts + i * 1000 // calls) for i in range(calls)]
    out = []
    for tick in range(ticks):
        for ids in call_ids:
            for timeline in timelines.values():
                sample, extra = timeline[tick]
                body = {"clientSamples": [ids.rewrite(sample)], **extra}
                message = _message(body)
                assert message is not None
                out.append(message)
    return out


def check_rising(messages: list[Message]) -> list[str]:
    """What is implausible in each client's samples: timestamps that do not ascend, counters that fall."""
    problems = []
    last_ts: dict[str, int] = {}
    last_counters: dict[str, dict[tuple[Any, ...], float]] = {}
    for sample in client_samples(messages):
        client = sample["clientId"]
        if sample["timestamp"] <= last_ts.get(client, -1):
            problems.append(f"{client}: timestamp {sample['timestamp']} after {last_ts[client]}")
        last_ts[client] = sample["timestamp"]
        counters = _counters(sample)
        before = last_counters.get(client, {})
        problems.extend(f"{client}: {key} fell" for key, value in counters.items() if value < before.get(key, value))
        last_counters[client] = {**before, **counters}
    return problems


# -- schema 3 frames for the decode measurement -------------------------------------------------


def decode_frames() -> dict[str, list[bytes]]:
    """3.x ClientSample frames: loadgen's mesh samples (12 tracks, about 20 KB), and the real cm4 capture's."""
    synthetic = [m.frame.encode() for m in mesh(2, 4, 6, seed=3, schema="3")]
    steady = [f for f in synthetic if len(f) >= 0.8 * max(map(len, synthetic))]  # past the first, smaller samples
    real = [m["body"].encode() for m in json.loads(CAPTURE_V3.read_text())["messages"]]
    return {
        f"loadgen 3.x mesh sample ({sum(map(len, steady)) / len(steady) / 1024:.0f} KB)": steady,
        f"cm4 capture frame ({sum(map(len, real)) / len(real) / 1024:.0f} KB)": real,
    }
