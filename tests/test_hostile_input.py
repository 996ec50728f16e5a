"""Input that cannot hurt: every bad message is a 4xx with a reason, never a 500, over real HTTP/WebSocket.

A seeded mutation fuzz of the real captures (tests/fixtures) and of hand-built samples runs against a
collector with the default processors; afterwards the process is alive, no answer was a 5xx, every
report was schema-valid (conftest checks each recorded report) and a good sample still correlates.
"""

from __future__ import annotations

import copy
import gzip
import json
import random
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests import _samples
from webrtc_observer.testing import RunningCollector, running_collector

YAML = """
receivers: {observertc: {endpoint: "127.0.0.1:0", max_message_bytes: 8MiB}}
processors: {correlation: {}, quality: {}, reports: {}}
exporters: {recording: {}}
service: {pipelines: {p: {receivers: [observertc], processors: [correlation, quality, reports], exporters: [recording]}}}
"""


@pytest.fixture
async def pipeline() -> AsyncIterator[RunningCollector]:
    async with running_collector(YAML) as c:
        yield c


async def post(
    http: aiohttp.ClientSession, c: RunningCollector, body: bytes, path: str = "/rest/samples/svc/mu", **headers: str
) -> tuple[int, dict[str, Any]]:
    async with http.post(c.url(path), data=body, headers=headers) as resp:
        text = await resp.text()
        return resp.status, (json.loads(text) if resp.content_type == "application/json" else {"text": text})


def _deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


def _v2_with(**changes: Any) -> bytes:
    sample = _samples.client_sample_v2()
    sample.update(changes)
    return json.dumps(sample).encode()


def _v3_with(**changes: Any) -> bytes:
    sample = _samples.client_sample_v3()
    sample.update(changes)
    return json.dumps(sample).encode()


def _v2_track_ssrc(ssrc: int) -> bytes:
    sample = _samples.client_sample_v2()
    sample["inboundAudioTracks"][0]["ssrc"] = ssrc
    return json.dumps({"clientSamples": [sample]}).encode()


REFUSED = {
    "invalid UTF-8 in a ClientSample": (b'{"clientId": "\xff\xfe", "timestamp": 1}', "bad_json"),
    "invalid UTF-8 in a wrapper": (b'{"clientSamples": [{"clientId": "\xff", "timestamp": 1}]}', "bad_json"),
    "10^5-deep array": (_deep(100_000), "invalid_sample"),
    "10^5-deep value in a 2.x sample": (b'{"clientId":"a","timestamp":1,"x":' + _deep(100_000) + b"}", "too_deep"),
    "10^5-deep value in a wrapper": (
        b'{"clientSamples":[{"clientId":"a","timestamp":1,"x":' + _deep(100_000) + b"}]}",
        "too_deep",
    ),
    "10^5-deep 3.x attachments": (b'{"clientId":"a","timestamp":1,"attachments":' + _deep(100_000) + b"}", "too_deep"),
    "SSRC 2^70": (_v2_track_ssrc(2**70), "invalid_sample"),
    "timestamp -2^63-1": (_v2_with(timestamp=-(2**63) - 1), "invalid_sample"),
    "event timestamp -2^63-1": (_v2_with(customCallEvents=[{"name": "X", "timestamp": -(2**63) - 1}]), "invalid_sample"),
    "int32 field past 2^31": (_v2_with(sampleSeq=2**31), "invalid_sample"),
    "3.x timestamp 1e300": (_v3_with(timestamp=1e300), "invalid_sample"),
    "legacy invalid UTF-8": (b'{"peerConnectionId": "\xff", "timestamp": 1}', "bad_json"),
}


@pytest.mark.parametrize("case", REFUSED)
async def test_bad_input_is_a_400_with_a_reason(pipeline: RunningCollector, http: aiohttp.ClientSession, case: str) -> None:
    body, reason = REFUSED[case]
    path = "/pcsamples/svc/mu" if case.startswith("legacy") else "/rest/samples/svc/mu"
    status, answer = await post(http, pipeline, body, path)
    assert (status, answer.get("error")) == (400, reason), answer


async def test_garbage_protobuf_and_gzip_are_400(pipeline: RunningCollector, http: aiohttp.ClientSession) -> None:
    status, answer = await post(http, pipeline, bytes(range(256)), **{"Content-Type": "application/x-protobuf"})
    assert (status, answer["error"]) == (400, "bad_protobuf")
    status, answer = await post(http, pipeline, gzip.compress(b"{}")[:-3] + b"zzz", **{"Content-Encoding": "gzip"})
    assert (status, answer["error"]) == (400, "bad_gzip")


async def test_ints_past_2_64_in_attachments_are_kept_as_text(pipeline: RunningCollector, http: aiohttp.ClientSession) -> None:
    v3 = _samples.client_sample_v3()
    v3["attachments"] = {"big": 2**70}
    v3["peerConnections"][0]["attachments"] = {"small": -(2**70)}
    status, answer = await post(http, pipeline, json.dumps(v3).encode())
    assert status == 202, answer
    v2 = _samples.client_sample_v2()
    v2["customCallEvents"] = [{"name": "X", "attachments": {"a": 2**65}}]
    status, answer = await post(http, pipeline, json.dumps(v2).encode())
    assert status == 202, answer
    assert pipeline.telemetry.get("receiver_accepted_samples").value("observertc", "http") == 2


# -- limits -------------------------------------------------------------------------------------------


def _tracks(n: int) -> bytes:
    sample = _samples.client_sample_v2()
    sample["inboundAudioTracks"] = [{"peerConnectionId": "pc", "trackId": f"t{i}", "ssrc": i} for i in range(n)]
    return json.dumps({"clientSamples": [sample]}).encode()


async def test_amplification_cases_are_refused_by_the_limits(pipeline: RunningCollector, http: aiohttp.ClientSession) -> None:
    status, answer = await post(http, pipeline, _tracks(62_000))
    assert (status, answer["error"]) == (400, "limits") and "max_records_per_sample" in answer["detail"], answer
    status, answer = await post(http, pipeline, _v2_with(clientId="x" * 3_900_000))
    assert (status, answer["error"]) == (400, "limits") and "clientId" in answer["detail"], answer
    status, answer = await post(http, pipeline, _v2_with(customCallEvents=[{"name": "E"}] * 1001))
    assert (status, answer["error"]) == (400, "limits") and "max_events_per_sample" in answer["detail"]
    many = [_samples.client_sample_v2(client_id=f"c{i}") for i in range(101)]
    status, answer = await post(http, pipeline, json.dumps({"clientSamples": many}).encode())
    assert (status, answer["error"]) == (400, "limits") and "max_samples_per_message" in answer["detail"]
    long_pc = _samples.client_sample_v2()
    long_pc["pcTransports"] = [{"transportId": "t" * 257, "peerConnectionId": "pc"}]
    status, answer = await post(http, pipeline, json.dumps(long_pc).encode())
    assert (status, answer["error"]) == (400, "limits") and "transportId" in answer["detail"]
    status, answer = await post(http, pipeline, _v2_with(), path=f"/rest/samples/{'s' * 300}/mu")
    assert (status, answer["error"]) == (400, "limits") and "serviceId" in answer["detail"]
    assert pipeline.exporter().samples == []  # nothing of a refused message went on
    # Within the limits: accepted.
    status, answer = await post(http, pipeline, _tracks(1500))
    assert status == 202, answer
    assert pipeline.telemetry.get("samples_refused").value("limits") == 6


async def test_long_strings_in_a_samples_wrapper_refused_when_ids_and_taken_otherwise(
    pipeline: RunningCollector, http: aiohttp.ClientSession
) -> None:
    """The 2.x wrapper's decoding bounds every string to max_id_length on the way, and decodes a
    message with a longer one again to tell an id (refused) from other text (taken)."""
    long = "x" * 257

    def wrapper(client: dict[str, Any] | None = None, sfu: dict[str, Any] | None = None) -> bytes:
        body: dict[str, Any] = {"clientSamples": [client or _samples.client_sample_v2()]}
        if sfu is not None:
            body["sfuSamples"] = [sfu]
        return json.dumps(body).encode()

    track = _samples.client_sample_v2()
    track["inboundVideoTracks"] = [{"peerConnectionId": "pc", "trackId": long, "ssrc": 1}]
    pair = _samples.client_sample_v2()
    pair["iceCandidatePairs"] = [{"peerConnectionId": "pc", "candidatePairId": long}]
    sfu = _samples.sfu_sample_v2()
    sfu["transports"][0]["transportId"] = long
    for body, named in (
        (wrapper(_samples.client_sample_v2(call_id=long)), "callId"),
        (wrapper(track), "trackId"),
        (wrapper(pair), "candidatePairId"),
        (wrapper(sfu=sfu), "transportId"),
        (wrapper(_samples.client_sample_v2(marker=long)), "marker"),
    ):
        status, answer = await post(http, pipeline, body)
        assert (status, answer["error"]) == (400, "limits") and named in answer["detail"], (named, answer)
    assert pipeline.exporter().samples == []
    text = _samples.client_sample_v2()
    text["certificates"] = [{"peerConnectionId": "pc", "fingerprint": "f", "base64Certificate": "A" * 5000}]
    text["localSDPs"] = ["v=0 " + "a" * 5000]
    status, answer = await post(http, pipeline, wrapper(text))
    assert (status, answer) == (202, {"accepted": 1})
    meta = [r.payload for r in pipeline.exporter().reports if r.type == "CALL_META_DATA"]
    assert any(m.type == "CERTIFICATE" and "A" * 5000 in m.payload for m in meta), meta
    assert any(m.type == "LOCAL_SDP" and "a" * 5000 in m.payload for m in meta), meta


# -- the fuzz -----------------------------------------------------------------------------------------

_HUGE = (2**64, -(2**63) - 1, 2**70, 10**30, -1, 1e300, -1e300, 0.5, True, None, "", "x" * 5000, [], {}, [[[[1]]]])


def _mutate_value(rng: random.Random, value: Any) -> Any:
    choice = rng.randrange(6)
    if choice == 0:
        return rng.choice(_HUGE)
    if choice == 1:
        return str(value)
    if choice == 2:
        return [value]
    if choice == 3:
        return {"v": value}
    if choice == 4 and isinstance(value, (int, float)) and not isinstance(value, bool):
        return -value * 2**40
    return rng.choice(["\ud800", "NULL", "💥" * 300, 5])


def _mutate(rng: random.Random, node: Any, rate: float) -> Any:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            r = rng.random()
            if r < rate / 3:
                continue  # drop the key
            out[k] = _mutate_value(rng, v) if r < rate else _mutate(rng, v, rate)
        if rng.random() < rate and node:
            k = rng.choice(list(node))
            out[k + "x" if rng.random() < 0.5 else k] = _mutate_value(rng, node[k])
        return out
    if isinstance(node, list):
        items = [_mutate(rng, v, rate) for v in node]
        if items and rng.random() < rate:
            items.append(copy.deepcopy(rng.choice(items)))  # a duplicated record
        return items
    return _mutate_value(rng, node) if rng.random() < rate else node


def _bytes_mutation(rng: random.Random, body: bytes) -> bytes:
    choice = rng.randrange(4)
    if choice == 0:
        return body[: rng.randrange(len(body))]  # truncated
    if choice == 1:
        pos = rng.randrange(len(body))
        return body[:pos] + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8))) + body[pos:]
    if choice == 2:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    return body.replace(b'"', b"\xc3", 1)


def _seeds() -> list[tuple[str, Any]]:
    stream = json.loads((_samples.FIXTURES / "client-sample-v3.5.0.golden-stream.json").read_text())
    seeds: list[tuple[str, Any]] = [("samples", {**m, "clientId": "client-42"}) for m in stream["messages"]]
    seeds += [
        ("samples", _samples.samples_v2()),
        ("samples", _samples.client_sample_v2()),
        ("samples", _samples.client_sample_v3()),
        ("pcsamples", _samples.pc_sample_legacy()),
    ]
    return seeds


FUZZ_CASES = 4000


async def test_mutation_fuzz_gives_no_5xx_and_correlation_survives(
    pipeline: RunningCollector, http: aiohttp.ClientSession
) -> None:
    rng = random.Random(20261201)
    seeds = _seeds()
    statuses: Counter[int] = Counter()
    failures: list[tuple[int, bytes]] = []
    ws_sent = 0
    ws_url = pipeline.url("/samples/fuzz/mu").replace("http:", "ws:")
    async with http.ws_connect(ws_url) as ws:
        for i in range(FUZZ_CASES):
            route, seed = rng.choice(seeds)
            mutated = _mutate(rng, seed, rate=rng.choice((0.001, 0.005, 0.02, 0.1)))
            try:
                body = json.dumps(mutated).encode("utf-8", "surrogatepass")
            except (TypeError, ValueError):
                continue
            if rng.random() < 0.15:
                body = _bytes_mutation(rng, body)
            if route == "samples" and i % 10 == 0:  # some over the WebSocket: answered with error frames
                await ws.send_bytes(body)
                ws_sent += 1
                continue
            status, _ = await post(
                http, pipeline, body, ("/rest/samples" if route == "samples" else "/pcsamples") + f"/svc-{i % 7}/mu"
            )
            statuses[status] += 1
            if status >= 500:
                failures.append((status, body[:300]))
        await ws.send_bytes(b"[1]")  # a last bad frame: its answer comes after those of all the others
        replies = []
        while True:
            reply = await ws.receive(timeout=30)
            assert reply.type == aiohttp.WSMsgType.BINARY, reply  # the connection stayed open
            replies.append(json.loads(reply.data))
            if replies[-1].get("detail") == "expected a JSON object, got an array":
                break
    assert ws_sent > 50 and not [r for r in replies if r["error"] == "internal_error"], replies[:5]
    assert not failures, failures[:5]
    assert statuses[202] > 300 and statuses[400] > 300, statuses  # the fuzz reached both sides
    # A good sample afterwards still correlates.
    good = _samples.client_sample_v2(client_id="after-fuzz", call_id=None)
    good["roomId"] = "room-after-fuzz"
    status, _ = await post(http, pipeline, json.dumps(good).encode(), "/rest/samples/svc-good/mu")
    assert status == 202
    events = [
        r.payload
        for r in pipeline.exporter().reports
        if r.type == "CALL_EVENT" and _get(r.payload, "roomId") == "room-after-fuzz"
    ]
    names = {_get(e, "name") for e in events}
    assert {"CALL_STARTED", "CLIENT_JOINED"} <= names, names


def _get(payload: Any, key: str) -> Any:
    if isinstance(payload, dict):
        return payload.get(key)
    import msgspec

    return msgspec.to_builtins(payload).get(key)


async def test_internal_errors_are_counted_and_their_tracebacks_rate_limited(
    pipeline: RunningCollector, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from webrtc_observer.receiver import observertc

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(observertc, "decode", broken)
    for _ in range(12):
        status, answer = await post(http, pipeline, _v2_with())
        assert (status, answer["error"]) == (500, "internal_error")
    assert pipeline.telemetry.get("receiver_internal_errors").value("observertc", "http") == 12
    tracebacks = [r for r in caplog.records if r.exc_info and "a bug" in str(r.exc_info[1])]
    assert 1 <= len(tracebacks) <= 5, len(tracebacks)
