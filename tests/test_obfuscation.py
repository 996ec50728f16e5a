"""The obfuscation processor, through a real collector: samples posted over HTTP, what each pipeline recorded.

Every collector here has two pipelines fed by one receiver: ``private`` (observertc → obfuscation →
recording/private) and ``raw`` (observertc → recording/raw). The raw pipeline gets the very batch
objects the obfuscation processor was handed, so it shows that the processor never changes them.
Expected values are computed here with hashlib, from the construction the processor documents.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from tests import _samples
from webrtc_observer.components import config_types
from webrtc_observer.config import ConfigError, load_text
from webrtc_observer.model import Batch, ClientSample, MetaItem, Origin, Report, SfuSample, TurnSample
from webrtc_observer.processors.obfuscation import FACTORY, ObfuscationConfig, _BoundedCache
from webrtc_observer.testing import running_collector, settings_for_tests

SALT = "a-test-salt-of-some-length"
JSON = {"Content-Type": "application/json"}


def h(value: str) -> str:
    return hashlib.sha256(SALT.encode("utf-8") + value.encode("utf-8")).hexdigest()


def collector_yaml(options: str = "") -> str:
    return f"""
receivers:
  observertc:
    endpoint: 127.0.0.1:0
processors:
  obfuscation:
    salt: ${{env:OBSERVER_SALT}}
{options}
exporters:
  recording/private: {{}}
  recording/raw: {{}}
service:
  pipelines:
    private:
      receivers: [observertc]
      processors: [obfuscation]
      exporters: [recording/private]
    raw:
      receivers: [observertc]
      exporters: [recording/raw]
"""


async def post(http, collector, path: str, body: dict[str, Any]) -> None:
    async with http.post(collector.url(path), data=json.dumps(body), headers=JSON) as resp:
        assert resp.status == 202, await resp.text()


async def recorded(yaml: str, http, path: str, body: dict[str, Any]) -> tuple[list[Any], list[Any], Any]:
    """Post one body; (samples of the private pipeline, samples of the raw one, the running collector)."""
    async with running_collector(yaml, env={"OBSERVER_SALT": SALT}) as collector:
        await post(http, collector, path, body)
        private = collector.exporter("recording/private")
        raw = collector.exporter("recording/raw")
        return private.samples, raw.samples, collector


def counted(collector: Any, field: str) -> float:
    return collector.telemetry.get("obfuscated_values").value("obfuscation", field)


def v2_wrapper() -> dict[str, Any]:
    wrapper = _samples.samples_v2()
    wrapper["sfuSamples"][0]["transports"][0].update(
        localAddress="203.0.113.200", localPort=40000, remoteAddress="192.0.2.10", remotePort=50000
    )
    return wrapper


def v3_sample() -> dict[str, Any]:
    """The golden 3.5.0 sample, with room/user in attachments, ICE candidates and candidate meta items."""
    sample = _samples.client_sample_v3()
    sample["attachments"] = {"roomId": "room-v3", "userId": "user-v3", "app": "observertc-tests"}
    pc = sample["peerConnections"][0]
    pc["iceCandidates"] = [
        # the pair CP01 names LC01 as local, RC01 as remote; `url` marks a local candidate
        {"id": "LC01", "timestamp": 1, "address": "3f9c1a2e-77b1-4d3e-9a7d-1c2b3d4e5f60.local", "port": 54400,
         "protocol": "udp", "candidateType": "host"},
        {"id": "LC02", "timestamp": 1, "address": "2001:db8:85a3:8d3:1319:8a2e:370:7348", "port": 54401,
         "protocol": "udp", "candidateType": "srflx", "url": "stun:stun.example.com:3478"},
        {"id": "LC03", "timestamp": 1, "address": "192.0.2.77", "port": 54402, "protocol": "udp",
         "candidateType": "srflx", "url": "stun:stun.example.com:3478"},
        {"id": "RC01", "timestamp": 1, "address": "203.0.113.9", "port": 3478, "protocol": "udp",
         "candidateType": "relay"},
    ]  # fmt: skip
    sample["clientMetaItems"] = [
        {"type": "ICE_LOCAL_CANDIDATE", "payload": {"address": "198.51.100.33", "candidateType": "host"}},
        {
            "type": "ICE_REMOTE_CANDIDATE",
            "payload": {"address": "203.0.113.10", "candidateType": "relay", "relatedAddress": "198.51.100.34"},
        },
        {"type": "BROWSER", "payload": {"name": "Chrome", "address": "not-an-ice-candidate"}},
    ]
    return sample


def by_id(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in records}


# -- hashing ---------------------------------------------------------------------------------------------


async def test_v2_wrapper_ids_candidates_and_sfu_transports_are_hashed(http):
    private, _, collector = await recorded(collector_yaml(), http, "/rest/samples/svc/mu", v2_wrapper())

    client, sfu = private
    assert isinstance(client, ClientSample) and isinstance(sfu, SfuSample)
    assert client.user_id == h("user-c-alice")
    assert client.room_id == h("room-1")
    assert client.call_id == "call-1"  # not the room: kept, the correlation needs it as sent
    assert client.client_id == "c-alice"
    local, remote = client.local_candidates[0], client.remote_candidates[0]
    assert local["address"] == h("192.0.2.10")
    assert remote["address"] == h("198.51.100.7")  # a relay candidate, hashed by default
    assert local["port"] == 50000 and local["candidateType"] == "host" and remote["candidateType"] == "relay"
    transport = sfu.transports[0]
    assert transport["localAddress"] == h("203.0.113.200")
    assert transport["remoteAddress"] == h("192.0.2.10")
    assert transport["localPort"] == 40000 and transport["rtpPacketsReceived"] == 1000

    assert counted(collector, "user_id") == 1 and counted(collector, "room_id") == 1
    assert counted(collector, "candidate_address") == 2
    assert counted(collector, "sfu_transport_address") == 2
    assert counted(collector, "call_id") == 0


async def test_the_raw_pipeline_sharing_the_receiver_sees_the_original_samples(http):
    private, raw, _ = await recorded(collector_yaml(), http, "/rest/samples/svc/mu", v2_wrapper())

    client, sfu = raw
    assert client.user_id == "user-c-alice" and client.room_id == "room-1"
    assert client.local_candidates[0]["address"] == "192.0.2.10"
    assert client.remote_candidates[0]["address"] == "198.51.100.7"
    assert sfu.transports[0]["localAddress"] == "203.0.113.200"
    assert sfu.transports[0]["remoteAddress"] == "192.0.2.10"
    # copies where something changed, the rest shared with the original
    assert private[0] is not client and private[1] is not sfu
    assert private[0].local_candidates is not client.local_candidates
    assert private[0].inbound_tracks is client.inbound_tracks
    assert private[1].inbound_rtp_pads is sfu.inbound_rtp_pads


async def test_v3_room_and_user_from_attachments_are_hashed_there_too(http):
    private, raw, collector = await recorded(collector_yaml(), http, "/rest/samples/svc/mu", v3_sample())

    (client,) = private
    assert client.origin.generation == "3"
    assert client.room_id == h("room-v3") and client.user_id == h("user-v3")
    assert client.call_id == "call-7f3a"
    attachments = json.loads(client.attachments)
    assert attachments == {"roomId": h("room-v3"), "userId": h("user-v3"), "app": "observertc-tests"}
    local = by_id(client.local_candidates)
    assert local["LC01"]["address"] == h("3f9c1a2e-77b1-4d3e-9a7d-1c2b3d4e5f60.local")
    assert local["LC02"]["address"] == h("2001:db8:85a3:8d3:1319:8a2e:370:7348")
    assert local["LC02"]["url"] == "stun:stun.example.com:3478"  # the operator's STUN server
    assert by_id(client.remote_candidates)["RC01"]["address"] == h("203.0.113.9")
    meta = {m.type: m.payload for m in client.meta}
    assert meta["ICE_LOCAL_CANDIDATE"] == {"address": h("198.51.100.33"), "candidateType": "host"}
    assert meta["ICE_REMOTE_CANDIDATE"]["address"] == h("203.0.113.10")
    assert meta["ICE_REMOTE_CANDIDATE"]["relatedAddress"] == h("198.51.100.34")
    assert meta["BROWSER"] == {"name": "Chrome", "address": "not-an-ice-candidate"}
    assert counted(collector, "attachments") == 1

    (original,) = raw
    assert original.room_id == "room-v3" and json.loads(original.attachments)["userId"] == "user-v3"
    assert by_id(original.local_candidates)["LC01"]["address"].endswith(".local")
    assert {m.type: m.payload for m in original.meta}["ICE_LOCAL_CANDIDATE"]["address"] == "198.51.100.33"


async def test_legacy_call_name_is_the_room_so_it_is_hashed_with_it(http):
    path = "/pcsamples/6a1e0d1b-5d3c-4c8b-9a59-8d5d2f8c1a11/mu"
    private, raw, collector = await recorded(collector_yaml(), http, path, _samples.pc_sample_legacy())

    (client,) = private
    assert client.origin.generation == "pcsample-v20200114"
    assert client.user_id == h("bob")
    assert client.room_id == h("standup") and client.call_id == h("standup")
    assert client.local_candidates[0]["address"] == h("192.0.2.20")
    assert client.remote_candidates[0]["address"] == h("198.51.100.8")
    assert counted(collector, "call_id") == 1
    assert raw[0].call_id == "standup" and raw[0].user_id == "bob"


# -- ip_addresses: truncate / keep, keep_relay_addresses -------------------------------------------------


async def test_truncate_zeroes_the_ipv4_host_byte_keeps_an_ipv6_slash_48_and_hashes_mdns_names(http):
    yaml = collector_yaml("    ip_addresses: truncate")
    private, raw, _ = await recorded(yaml, http, "/rest/samples/svc/mu", v3_sample())

    (client,) = private
    local = by_id(client.local_candidates)
    assert local["LC01"]["address"] == h("3f9c1a2e-77b1-4d3e-9a7d-1c2b3d4e5f60.local")
    assert local["LC02"]["address"] == "2001:db8:85a3::"
    assert local["LC03"]["address"] == "192.0.2.0"
    assert by_id(client.remote_candidates)["RC01"]["address"] == "203.0.113.0"
    meta = {m.type: m.payload for m in client.meta}
    assert meta["ICE_REMOTE_CANDIDATE"] == {"address": "203.0.113.0", "candidateType": "relay", "relatedAddress": "198.51.100.0"}
    assert client.user_id == h("user-v3")  # ids are still hashed
    assert by_id(raw[0].local_candidates)["LC03"]["address"] == "192.0.2.77"


async def test_truncate_v2_and_sfu_transports(http):
    yaml = collector_yaml("    ip_addresses: truncate")
    private, _, _ = await recorded(yaml, http, "/rest/samples/svc/mu", v2_wrapper())

    client, sfu = private
    assert client.local_candidates[0]["address"] == "192.0.2.0"
    assert client.remote_candidates[0]["address"] == "198.51.100.0"
    assert sfu.transports[0]["localAddress"] == "203.0.113.0"
    assert sfu.transports[0]["remoteAddress"] == "192.0.2.0"


@pytest.mark.parametrize("mode", ["hash", "truncate"])
async def test_relay_addresses_are_kept_when_configured_but_not_their_related_address(http, mode):
    yaml = collector_yaml(f"    ip_addresses: {mode}\n    keep_relay_addresses: true")
    private, _, _ = await recorded(yaml, http, "/rest/samples/svc/mu", v3_sample())

    (client,) = private
    assert by_id(client.remote_candidates)["RC01"]["address"] == "203.0.113.9"
    expected_host = h("192.0.2.77") if mode == "hash" else "192.0.2.0"
    assert by_id(client.local_candidates)["LC03"]["address"] == expected_host
    relay = {m.type: m.payload for m in client.meta}["ICE_REMOTE_CANDIDATE"]
    assert relay["address"] == "203.0.113.10"
    # the related address of a relay candidate is the client's own public address
    assert relay["relatedAddress"] == (h("198.51.100.34") if mode == "hash" else "198.51.100.0")


async def test_relay_addresses_are_kept_in_v2_samples_when_configured(http):
    yaml = collector_yaml("    keep_relay_addresses: true")
    private, _, _ = await recorded(yaml, http, "/rest/samples/svc/mu", v2_wrapper())

    client = private[0]
    assert client.remote_candidates[0]["address"] == "198.51.100.7"  # candidateType relay
    assert client.local_candidates[0]["address"] == h("192.0.2.10")  # host


async def test_keep_leaves_addresses_and_disabled_ids_alone(http):
    yaml = collector_yaml("    ip_addresses: keep\n    user_id: false")
    private, raw, collector = await recorded(yaml, http, "/rest/samples/svc/mu", v2_wrapper())

    client, sfu = private
    assert client.user_id == "user-c-alice" and client.room_id == h("room-1")
    assert client.local_candidates is raw[0].local_candidates
    assert sfu is raw[1]  # nothing to change in it: passed on as it is
    assert counted(collector, "candidate_address") == 0


async def test_a_batch_with_nothing_to_obfuscate_is_passed_on_as_it_is(http):
    yaml = collector_yaml("    ip_addresses: keep\n    user_id: false\n    room_id: false")
    async with running_collector(yaml, env={"OBSERVER_SALT": SALT}) as collector:
        await post(http, collector, "/rest/samples/svc/mu", v2_wrapper())
        assert collector.exporter("recording/private").batches[0] is collector.exporter("recording/raw").batches[0]


# -- the processor on its own: what the receiver never sends ---------------------------------------------


class _Keep:
    def __init__(self) -> None:
        self.batches: list[Batch] = []

    async def consume(self, batch: Batch) -> None:
        self.batches.append(batch)


async def test_reports_pass_through_and_turn_client_addresses_are_obfuscated():
    settings = settings_for_tests("obfuscation", kind="processor")
    downstream = _Keep()
    processor = FACTORY.create(settings, ObfuscationConfig(salt=SALT), downstream)
    origin = Origin(service_id="svc", media_unit_id="turn-eu", received_at=1, generation="2")
    turn = TurnSample(
        origin=origin,
        server_id="turn-1",
        sessions=[{"sessionId": "s1", "clientAddress": "192.0.2.99", "serverAddress": "203.0.113.1"}],
        allocations=[{"peerId": "p1", "peerAddress": "198.51.100.99", "relayedAddress": "203.0.113.1"}],
    )
    report = Report(type="CALL_EVENT", payload={"userId": "plain", "roomId": "plain"})
    batch = Batch(samples=[turn], reports=[report])

    await processor.consume(batch)

    (out,) = downstream.batches
    assert out.reports is batch.reports and out.reports[0] is report
    (sample,) = out.samples
    assert sample.sessions[0] == {"sessionId": "s1", "clientAddress": h("192.0.2.99"), "serverAddress": h("203.0.113.1")}
    assert sample.allocations[0]["peerAddress"] == h("198.51.100.99")
    assert turn.sessions[0]["clientAddress"] == "192.0.2.99"  # the original is untouched

    keep_relay = FACTORY.create(settings, ObfuscationConfig(salt=SALT, keep_relay_addresses=True), downstream)
    kept = keep_relay.process(Batch(samples=[turn])).samples[0]
    assert kept.sessions[0]["serverAddress"] == "203.0.113.1" and kept.allocations[0]["relayedAddress"] == "203.0.113.1"
    assert kept.sessions[0]["clientAddress"] == h("192.0.2.99")


async def test_candidate_meta_items_of_other_shapes_are_left_alone():
    processor = FACTORY.create(settings_for_tests("obfuscation", kind="processor"), ObfuscationConfig(salt=SALT), _Keep())
    origin = Origin(service_id="svc", media_unit_id="mu", received_at=1, generation="2")
    meta = [MetaItem(type="ICE_LOCAL_CANDIDATE", payload="candidate:1 1 udp 2122260223 192.0.2.1 54400 typ host")]
    sample = ClientSample(origin=origin, client_id="c", timestamp=1, meta=meta)
    assert processor.process(Batch(samples=[sample])).samples[0] is sample


def test_the_hash_cache_is_bounded():
    calls: list[str] = []
    cache = _BoundedCache(lambda v: calls.append(v) or v.upper(), size=2, max_length=8)
    assert [cache("a"), cache("b"), cache("a")] == ["A", "B", "A"]
    assert calls == ["a", "b"]
    cache("c")  # full: cleared, then kept
    assert len(cache) == 1
    cache("much-longer-than-8")
    cache("much-longer-than-8")
    assert calls.count("much-longer-than-8") == 2 and len(cache) == 1


# -- configuration ---------------------------------------------------------------------------------------

CONFIG = """
receivers:
  observertc: {{}}
processors:
  obfuscation:
{options}
exporters:
  debug: {{}}
service:
  pipelines:
    samples:
      receivers: [observertc]
      processors: [obfuscation]
      exporters: [debug]
"""


def config_issues(options: str, env: dict[str, str] | None = None) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        load_text(CONFIG.format(options=options), config_types(), env=env or {})
    return {i.path: i.message for i in caught.value.issues}


@pytest.mark.parametrize("options", ["    {}", "    salt: ''", "    user_id: true"], ids=["empty", "blank", "missing"])
def test_a_missing_salt_is_refused_with_how_to_set_it(options):
    issues = config_issues(options)
    assert list(issues) == ["processors.obfuscation.salt"]
    assert "${env:OBSERVER_SALT}" in issues["processors.obfuscation.salt"]


def test_a_short_salt_is_refused_without_repeating_it():
    issues = config_issues("    salt: ${env:OBSERVER_SALT}", env={"OBSERVER_SALT": "s3cr3t!"})
    message = issues["processors.obfuscation.salt"]
    assert "at least 8" in message and "s3cr3t!" not in message


def test_a_wrong_ip_addresses_mode_is_refused_and_every_issue_is_listed():
    issues = config_issues("    salt: short\n    ip_addresses: anonymize")
    assert "'hash', 'truncate', 'keep'" in issues["processors.obfuscation.ip_addresses"]
    assert "processors.obfuscation.salt" in issues


def test_a_good_config_resolves_with_its_defaults():
    text = CONFIG.format(options="    salt: ${env:OBSERVER_SALT}\n    ip_addresses: truncate")
    config = load_text(text, config_types(), env={"OBSERVER_SALT": SALT})
    (options,) = config.components["processors"].values()
    assert options == ObfuscationConfig(salt=SALT, ip_addresses="truncate")
    assert options.user_id and options.room_id and not options.keep_relay_addresses
