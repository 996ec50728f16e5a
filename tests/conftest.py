from __future__ import annotations

import base64
import gzip
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from webrtc_observer.testing import RunningCollector, running_collector

SCHEMAS = Path(__file__).resolve().parents[1] / "webrtc_observer" / "schemas"


def receiver_yaml(options: str) -> str:
    """A collector whose receiver (``options``: YAML lines indented by 4) feeds the recording exporter."""
    return f"""
receivers:
  observertc:
    endpoint: 127.0.0.1:0
{options.rstrip()}
exporters:
  recording: {{}}
service:
  pipelines:
    samples:
      receivers: [observertc]
      exporters: [recording]
"""


COLLECTOR_YAML = receiver_yaml(
    """\
    max_message_bytes: 64KiB
    cors:
      allowed_origins: ["https://app.example.com"]"""
)


# Every report any test produces is checked against its Avro schema (the contract with consumers).
REPORT_SCHEMA_FILES = {
    "CALL_EVENT": "CallEventReport",
    "CALL_META_DATA": "CallMetaReport",
    "CLIENT_EXTENSION_DATA": "ClientExtensionReport",
    "PEER_CONNECTION_TRANSPORT": "PeerConnectionTransportReport",
    "ICE_CANDIDATE_PAIR": "IceCandidatePairReport",
    "PEER_CONNECTION_DATA_CHANNEL": "ClientDataChannelReport",
    "INBOUND_AUDIO_TRACK": "InboundAudioTrackReport",
    "INBOUND_VIDEO_TRACK": "InboundVideoTrackReport",
    "OUTBOUND_AUDIO_TRACK": "OutboundAudioTrackReport",
    "OUTBOUND_VIDEO_TRACK": "OutboundVideoTrackReport",
    "OBSERVER_EVENT": "ObserverEventReport",
    "SFU_EVENT": "SfuEventReport",
    "SFU_META_DATA": "SfuMetaReport",
    "SFU_EXTENSION_DATA": "SfuExtensionReport",
    "SFU_TRANSPORT": "SFUTransportReport",
    "SFU_INBOUND_RTP_PAD": "SfuInboundRtpPadReport",
    "SFU_OUTBOUND_RTP_PAD": "SfuOutboundRtpPadReport",
    "SFU_SCTP_STREAM": "SfuSctpStreamReport",
}
_parsed_schemas: dict[str, Any] = {}


def assert_valid_report(report_type: str, payload: Any) -> None:
    """Raise unless ``payload`` validates against the 2.2.11 Avro schema of ``report_type`` (strictly).

    A typed payload (a ``ReportRecord``) is checked as the builtins it encodes to.
    """
    import fastavro
    import msgspec
    from fastavro.validation import validate

    if not isinstance(payload, dict):
        payload = msgspec.to_builtins(payload)

    assert report_type in REPORT_SCHEMA_FILES, f"unknown report type {report_type}"
    if report_type not in _parsed_schemas:
        text = (SCHEMAS / "v2_2_11" / f"{REPORT_SCHEMA_FILES[report_type]}.avsc").read_text()
        _parsed_schemas[report_type] = fastavro.parse_schema(json.loads(text))
    validate(payload, _parsed_schemas[report_type], raise_errors=True, strict=True)


@pytest.fixture(autouse=True)
def _every_recorded_report_is_schema_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    from webrtc_observer.testing import RecordingExporter

    original = RecordingExporter.consume

    async def consume(self: RecordingExporter, batch: Any) -> None:
        for report in batch.reports:
            assert_valid_report(report.type, report.payload)
            assert report.schema_version == "2.2.11"
        await original(self, batch)

    monkeypatch.setattr(RecordingExporter, "consume", consume)


@pytest.fixture
async def collector() -> AsyncIterator[RunningCollector]:
    """The collector built from YAML, in-process, its receiver on a free port, recording what it exports."""
    async with running_collector(COLLECTOR_YAML) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _compile(proto_dir: Path, proto_file: str, out: Path, module_name: str) -> Any:
    """Message classes of a .proto compiled by protoc into a private descriptor pool.

    Private, because the 2.x files all define ``org.observertc.schemas.protobuf.Samples``: one shared
    pool would refuse the second of them.
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    descriptor_set = out / f"{module_name}.pb"
    code = protoc.main(["protoc", f"-I{proto_dir}", f"--descriptor_set_out={descriptor_set}", str(proto_dir / proto_file)])
    assert code == 0, f"protoc failed on {proto_file}"
    pool = descriptor_pool.DescriptorPool()
    for fd in descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file:
        pool.Add(fd)
    package = "org.observertc.schemas.protobuf"
    names = {"Samples", "ClientSample"}
    classes = {}
    for name in names:
        try:
            classes[name] = message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}"))
        except KeyError:
            continue
    return SimpleNamespace(**classes)


def _stringify_free_form(node: Any) -> Any:
    """The 3.x protobuf carries attachments/payload as JSON strings where JSON sends objects."""
    if isinstance(node, dict):
        return {
            k: json.dumps(v) if k in ("attachments", "payload") and isinstance(v, dict) else _stringify_free_form(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_stringify_free_form(v) for v in node]
    return node


def _bytes_as_base64(node: dict[str, Any], descriptor: Any) -> dict[str, Any]:
    """ParseDict takes bytes fields as base64 text; encode our UTF-8 identifiers that way."""
    from google.protobuf.descriptor import FieldDescriptor

    out = {}
    for key, value in node.items():
        field = descriptor.fields_by_name.get(key)
        if field is None:
            continue
        if field.type == FieldDescriptor.TYPE_BYTES and isinstance(value, str):
            value = base64.b64encode(value.encode()).decode()
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if isinstance(value, list):
                value = [_bytes_as_base64(v, field.message_type) for v in value]
            elif isinstance(value, dict):
                value = _bytes_as_base64(value, field.message_type)
        out[key] = value
    return out


@pytest.fixture(scope="session")
def protobuf(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Independent encoders: the shipped .proto files compiled by protoc (grpcio-tools) at test time."""
    from google.protobuf.json_format import ParseDict

    out = tmp_path_factory.mktemp("pb")
    v2 = _compile(SCHEMAS / "v2_2_11", "ProtobufSamples.proto", out / "v2", "_test_pb_samples_v2")
    v3 = _compile(SCHEMAS / "v3_5_0", "ProtobufClientSampleV3.proto", out / "v3", "_test_pb_client_sample_v3")

    def samples_v2(wrapper: dict[str, Any]) -> bytes:
        return ParseDict(wrapper, v2.Samples(), ignore_unknown_fields=True).SerializeToString()

    def client_sample_v3(sample: dict[str, Any], uuid_ids: bool = False) -> bytes:
        """3.x identifiers are ``bytes`` on the wire: UTF-8 text, or 16 raw bytes for UUIDs."""
        sample = _bytes_as_base64(_stringify_free_form(sample), v3.ClientSample.DESCRIPTOR)
        return ParseDict(sample, v3.ClientSample(), ignore_unknown_fields=True).SerializeToString()

    return SimpleNamespace(samples_v2=samples_v2, client_sample_v3=client_sample_v3)


@pytest.fixture
def gz() -> Callable[[bytes], bytes]:
    return gzip.compress


@pytest.fixture(scope="session")
def protobuf_v3_samples(tmp_path_factory: pytest.TempPathFactory) -> Callable[[dict[str, Any]], bytes]:
    """An encoder for the proto3 ``ProtobufSamplesV3Optional`` wire format that @observertc/samples-encoder writes."""
    from google.protobuf.json_format import ParseDict

    module = _compile(
        SCHEMAS / "v2_2_11", "ProtobufSamplesV3Optional.proto", tmp_path_factory.mktemp("pb3"), "_test_pb_samples_v3opt"
    )

    def upper_enums(node: Any, descriptor: Any) -> Any:
        from google.protobuf.descriptor import FieldDescriptor

        out = {}
        for key, value in node.items():
            field = descriptor.fields_by_name.get(key)
            if field is None:
                continue
            if field.type == FieldDescriptor.TYPE_ENUM and isinstance(value, str):
                value = value.upper()
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                value = (
                    [upper_enums(v, field.message_type) for v in value]
                    if isinstance(value, list)
                    else upper_enums(value, field.message_type)
                )
            out[key] = value
        return out

    def encode(wrapper: dict[str, Any]) -> bytes:
        message = module.Samples()
        prepared = _bytes_as_base64(upper_enums(wrapper, message.DESCRIPTOR), message.DESCRIPTOR)
        return ParseDict(prepared, message, ignore_unknown_fields=True).SerializeToString()

    return encode
