"""Routing keys told from a message's bytes are those of the samples the decoder makes of it, or None.

A worker hands a message to the worker that owns it undecoded (``service.workers``) on the strength of
these keys, so a wrong key would put a room's samples in two processes.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tests import _samples
from webrtc_observer.model import Origin, routing_key
from webrtc_observer.receiver._decoding import RefusedInput, decode
from webrtc_observer.receiver._routing import routing_keys

FIXTURES = Path(__file__).parent / "fixtures"


def _decoded_keys(data: bytes, origin: Origin, encoding: str | None = None) -> list[str] | None:
    try:
        decoded = decode(data, origin, route="samples", encoding=encoding, gzipped=None, limit=1 << 24)  # type: ignore[arg-type]
    except RefusedInput:
        return None
    return [routing_key(s) for s in decoded.samples]


def _messages() -> list[tuple[str, bytes, str | None]]:
    """(name, bytes, declared schema version) of real and made-up messages of every generation."""
    out: list[tuple[str, bytes, str | None]] = []
    for name in ("browser-cm3-rest.json", "browser-cm4-ws.json"):
        for i, m in enumerate(json.loads((FIXTURES / name).read_text())["messages"]):
            out.append((f"{name}[{i}]", m["body"].encode(), None))
    golden = json.loads((FIXTURES / "client-sample-v3.5.0.golden-stream.json").read_text())
    out.append(("golden v3.5.0", json.dumps(golden["messages"][0]).encode(), "3.5.0"))
    room = _samples.client_sample_v2("alice", call_id="call-1", roomId="room-1")
    no_room = _samples.client_sample_v2("bob", call_id="call-2")
    placeholders = _samples.client_sample_v2("carol", call_id="NULL", roomId="NULL")
    only_client = _samples.client_sample_v2("dave", call_id=None)
    for name, body in {
        "wrapper with a room": _samples.samples_v2(room),
        "wrapper with SFU samples": _samples.samples_v2(room, no_room),
        "two rooms in one wrapper": _samples.samples_v2(room, no_room, sfu=False),
        "placeholder ids": _samples.samples_v2(placeholders, sfu=False),
        "client id only": _samples.samples_v2(only_client, sfu=False),
        "placeholder client id": _samples.samples_v2(_samples.client_sample_v2("NULL"), sfu=False),
        "empty room id": _samples.samples_v2(_samples.client_sample_v2("erin", call_id="call-3", roomId=""), sfu=False),
        "bare 2.x sample": room,
        "bare 2.x placeholders": placeholders,
        "3.x sample": _samples.client_sample_v3(),
        "3.x sample, room in attachments": {**_samples.client_sample_v3(), "attachments": {"roomId": "room-9"}},
        "3.x sample, attachments as text": {**_samples.client_sample_v3(), "attachments": json.dumps({"roomId": 12})},
        "not valid: a string ssrc": _samples.samples_v2(
            _samples.client_sample_v2("frank", inboundAudioTracks=[{"ssrc": "one"}]), sfu=False
        ),
        "not valid: no client id": _samples.samples_v2({"timestamp": 1}, sfu=False),
    }.items():
        out.append((name, json.dumps(body).encode(), None))
    return out


@pytest.mark.parametrize(("name", "data", "version"), _messages(), ids=lambda v: v if isinstance(v, str) else "")
def test_keys_from_the_bytes_are_the_decoded_samples_keys(name: str, data: bytes, version: str | None) -> None:
    origin = Origin("svc", "mu", 0, "2", schema_version=version)
    told = routing_keys(data, origin, route="samples", encoding="json", gzipped=None)
    decoded = _decoded_keys(data, origin)
    # A message the decoder refuses may still have keys: its owner refuses it, and the refusal goes back.
    assert told is None or decoded is None or told == decoded, (told, decoded)
    if decoded is not None and name != "two rooms in one wrapper":
        assert len(set(decoded)) > 1 or told is not None or "placeholder client" in name, "a usual message not told"


def test_the_usual_messages_are_told_without_decoding() -> None:
    """What browsers send (2.x wrappers, 3.x samples) is told from its bytes, else nothing is saved."""
    told = [
        routing_keys(data, Origin("svc", "mu", 0, "2"), route="samples", encoding="json", gzipped=None)
        for _, data, _ in _messages()
    ]
    assert sum(t is not None for t in told) >= len(told) - 4, told


def test_what_is_not_told_from_the_bytes_is_decoded_where_it_arrived() -> None:
    origin = Origin("svc", "mu", 0, "2")
    body = json.dumps(_samples.samples_v2(_samples.client_sample_v2("alice"))).encode()
    assert routing_keys(gzip.compress(body), origin, route="samples", encoding="json", gzipped=None) is None
    assert routing_keys(body, origin, route="samples", encoding="json", gzipped=True) is None
    assert routing_keys(body, origin, route="samples", encoding="protobuf", gzipped=None) is None
    assert routing_keys(body, origin, route="pcsamples", encoding="json", gzipped=None) is None
    assert routing_keys(b"[1, 2]", origin, route="samples", encoding="json", gzipped=None) is None
    assert routing_keys(b"{broken", origin, route="samples", encoding="json", gzipped=None) is None
