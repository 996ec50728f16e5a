"""Authentication on the receiver (static tokens, JWT), /metrics and the live view, over real sockets."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests import _samples
from webrtc_observer.config import ComponentId
from webrtc_observer.testing import RunningCollector, running_collector

TOKEN_A = "token-for-service-a-0123456789"
TOKEN_ALL = "token-for-every-service-0123456789"
SECRET = "an-hmac-secret-of-at-least-32-characters!"


@pytest.fixture(scope="module")
def rsa_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path_factory.mktemp("keys") / "public.pem"
    path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key, path


def _yaml(public_key_file: Path | None = None) -> str:
    jwt_block = (
        f"jwt: {{public_key_file: {public_key_file}, issuer: app-server, audience: observer}}"
        if public_key_file
        else f'jwt: {{secret: "{SECRET}", issuer: app-server, audience: observer}}'
    )
    return f"""
receivers:
  observertc:
    endpoint: 127.0.0.1:0
    cors: {{allowed_origins: ["https://app.example.com"]}}
    auth:
      bearer_tokens:
        - {{token: "{TOKEN_A}", service_ids: [svc-a]}}
        - {{token: "{TOKEN_ALL}", service_ids: ["*"]}}
      {jwt_block}
exporters:
  recording: {{}}
service:
  pipelines:
    samples: {{receivers: [observertc], exporters: [recording]}}
"""


@pytest.fixture
async def collector() -> AsyncIterator[RunningCollector]:
    async with running_collector(_yaml()) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _mint(key: Any = SECRET, algorithm: str = "HS256", **claims: Any) -> str:
    body = {"iss": "app-server", "aud": "observer", "exp": int(time.time()) + 600, **claims}
    return jwt.encode(body, key, algorithm=algorithm)


def _body(*clients: str, close: bool = False, sfu: bool = False) -> bytes:
    samples = [_samples.client_sample_v2(c) for c in clients] or [_samples.client_sample_v2()]
    return json.dumps(_samples.samples_v2(*samples, sfu=sfu, close=close)).encode()


async def _post(
    http: aiohttp.ClientSession,
    c: RunningCollector,
    service: str = "svc-a",
    token: str | None = None,
    query: str | None = None,
    body: bytes | None = None,
) -> tuple[int, dict[str, Any], Any]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    url = c.url(f"/rest/samples/{service}/mu" + (f"?accessToken={query}" if query else ""))
    async with http.post(url, data=body if body is not None else _body(), headers=headers) as r:
        return r.status, await r.json(), r.headers


def _refused(c: RunningCollector, reason: str) -> float:
    return c.telemetry.get("samples_refused").samples().get((reason,), 0)


async def test_static_tokens_by_header_and_query(collector, http):
    assert (await _post(http, collector, token=TOKEN_A))[0] == 202
    assert (await _post(http, collector, query=TOKEN_A))[0] == 202
    assert (await _post(http, collector, "svc-b", token=TOKEN_ALL))[0] == 202
    status, answer, _ = await _post(http, collector, "svc-b", token=TOKEN_A)
    assert (status, answer["error"]) == (403, "forbidden")
    assert len(collector.exporter().client_samples) == 3
    assert _refused(collector, "forbidden") == 1


async def test_missing_or_invalid_credentials_are_401_and_never_echoed(collector, http):
    for token in (None, "not-a-token-we-know-at-all", _mint(key="another-secret-of-at-least-32-chars!!", serviceId="svc-a")):
        status, answer, headers = await _post(http, collector, token=token)
        assert (status, answer["error"]) == (401, "unauthenticated")
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert token is None or token not in json.dumps(answer)
    expired = _mint(serviceId="svc-a", exp=int(time.time()) - 60)
    status, answer, _ = await _post(http, collector, token=expired)
    assert (status, answer["detail"]) == (401, "access token expired")
    wrong_issuer = _mint(serviceId="svc-a", iss="someone-else")
    assert (await _post(http, collector, token=wrong_issuer))[0] == 401
    no_service = _mint(clientId="c-alice")
    assert (await _post(http, collector, token=no_service))[0] == 401
    assert collector.exporter().batches == []
    assert _refused(collector, "unauthenticated") == 6


async def test_hs256_jwt_service_and_call_bound(collector, http):
    token = _mint(serviceId="svc-a")
    assert (await _post(http, collector, token=token))[0] == 202
    assert (await _post(http, collector, "svc-b", token=token))[0] == 403
    in_call = _mint(serviceId="svc-a", callId="call-1")
    assert (await _post(http, collector, token=in_call))[0] == 202
    other_call = _mint(serviceId="svc-a", callId="call-2")
    assert (await _post(http, collector, token=other_call))[0] == 403
    # A sample that names no call is put into the token's.
    body = json.dumps(_samples.samples_v2(_samples.client_sample_v2("c-dan", call_id=None), sfu=False)).encode()
    assert (await _post(http, collector, token=_mint(serviceId="svc-a", callId="call-9"), body=body))[0] == 202
    assert [(s.client_id, s.call_id) for s in collector.exporter().client_samples][-1] == ("c-dan", "call-9")
    room = _mint(serviceId="svc-a", roomId="room-elsewhere")
    body = json.dumps(_samples.samples_v2(_samples.client_sample_v2(roomId="room-1"), sfu=False)).encode()
    assert (await _post(http, collector, token=room, body=body))[0] == 403


async def test_rs256_jwt_with_a_key_generated_here(rsa_keys, http):
    key, public = rsa_keys
    async with running_collector(_yaml(public)) as c:
        assert (await _post(http, c, token=_mint(key, "RS256", serviceId="svc-a")))[0] == 202
        # The same claims signed with HS256 are refused: only the key's own algorithm family is accepted.
        forged = jwt.encode({"serviceId": "svc-a", "iss": "app-server", "aud": "observer"}, "x" * 40, algorithm="HS256")
        assert (await _post(http, c, token=forged))[0] == 401
        assert len(c.exporter().client_samples) == 1


async def test_a_jwt_bound_to_a_client_cannot_send_for_or_close_another(collector, http):
    alice = _mint(serviceId="svc-a", clientId="c-alice")
    assert (await _post(http, collector, token=alice, body=_body("c-alice")))[0] == 202
    for body in (_body("c-bob"), _body("c-bob", close=True), _body("c-alice", "c-bob"), _body("c-alice", sfu=True)):
        status, answer, _ = await _post(http, collector, token=alice, body=body)
        assert (status, answer["error"]) == (403, "forbidden")
    left = _samples.client_sample_v2("c-bob", customCallEvents=[{"name": "CLIENT_LEFT", "timestamp": _samples.T0}])
    body = json.dumps(_samples.samples_v2(left, sfu=False)).encode()
    assert (await _post(http, collector, token=alice, body=body))[0] == 403
    assert [s.client_id for s in collector.exporter().client_samples] == ["c-alice"]
    assert (await _post(http, collector, token=alice, body=_body("c-alice", close=True)))[0] == 202
    # Without a clientId claim a JWT sends for any client of its service.
    assert (await _post(http, collector, token=_mint(serviceId="svc-a"), body=_body("c-bob", close=True)))[0] == 202


async def _handshake_status(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> int:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with http.ws_connect(url, **kwargs):
            pass
    return refused.value.status


async def test_websocket_handshake_and_frames(collector, http):
    base = collector.url("/samples/svc-a/mu", scheme="ws")
    assert await _handshake_status(http, base) == 401
    assert await _handshake_status(http, base + "?accessToken=wrong-token-of-some-length") == 401
    other = collector.url("/samples/svc-b/mu", scheme="ws")
    assert await _handshake_status(http, f"{other}?accessToken={TOKEN_A}") == 403
    alice = _mint(serviceId="svc-a", clientId="c-alice")
    async with http.ws_connect(f"{base}?accessToken={alice}") as ws:
        await ws.send_bytes(_body("c-bob", close=True))
        answer = json.loads((await ws.receive(timeout=5)).data)
        assert answer["error"] == "forbidden"
        await ws.send_bytes(_body("c-alice"))
        await collector.exporter().wait_for_samples(1)
    async with http.ws_connect(base, headers={"Authorization": f"Bearer {TOKEN_A}"}) as ws:
        await ws.send_bytes(_body("c-carol"))
        await collector.exporter().wait_for_samples(2)
    assert [s.client_id for s in collector.exporter().client_samples] == ["c-alice", "c-carol"]
    refused = collector.telemetry.get("receiver_refused_messages").samples()
    assert refused[("observertc", "websocket", "forbidden")] == 2
    assert refused[("observertc", "websocket", "unauthenticated")] == 2


async def test_a_websocket_whose_token_expires_is_closed(collector, http):
    token = _mint(serviceId="svc-a", exp=int(time.time()) + 1)
    async with http.ws_connect(collector.url(f"/samples/svc-a/mu?accessToken={token}", scheme="ws")) as ws:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # frames are taken, unanswered, until the token expires
            await ws.send_bytes(_body("c-alice"))
            try:
                answer = await ws.receive(timeout=0.2)
            except TimeoutError:
                continue
            break
        assert json.loads(answer.data) == {"error": "unauthenticated", "detail": "access token expired"}
        assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1008
    assert collector.exporter().client_samples


async def test_websocket_origin_is_checked_against_cors(collector, http):
    url = collector.url(f"/samples/svc-a/mu?accessToken={TOKEN_A}", scheme="ws")
    assert await _handshake_status(http, url, origin="https://evil.example.net") == 403
    for origin in ("https://app.example.com", None):
        async with http.ws_connect(url, origin=origin) as ws:
            await ws.send_bytes(_body("c-x"))
    await collector.exporter().wait_for_samples(2)


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


SCRAPE_YAML = """
receivers:
  observertc: {endpoint: 127.0.0.1:0}
exporters:
  prometheus:
    endpoint: 127.0.0.1:0
    auth: {bearer_tokens: [{token: "scrape-token-0123456789"}]}
  liveview:
    endpoint: 127.0.0.1:0
    auth: {basic: {username: ops, password: "a-long-password"}}
service:
  pipelines:
    p: {receivers: [observertc], exporters: [prometheus, liveview]}
"""


async def test_metrics_and_liveview_behind_auth_with_security_headers(http):
    async with running_collector(SCRAPE_YAML) as c:
        metrics = f"http://127.0.0.1:{c.service.exporters[ComponentId('prometheus')].bound_port}/metrics"
        ui = f"http://127.0.0.1:{c.service.exporters[ComponentId('liveview')].bound_port}"
        async with http.get(metrics) as r:
            assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        async with http.get(metrics, headers={"Authorization": "Bearer scrape-token-0123456789"}) as r:
            assert r.status == 200 and "observertc_" in await r.text()
        for path in ("/ui", "/ui/api/state"):
            async with http.get(ui + path) as r:
                assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
                assert r.headers["X-Frame-Options"] == "DENY"
            async with http.get(ui + path, headers=_basic("ops", "wrong-password")) as r:
                assert r.status == 401
        for path in ("/ui", "/ui/api/state"):
            async with http.get(ui + path, headers=_basic("ops", "a-long-password")) as r:
                assert r.status == 200
                assert r.headers["X-Frame-Options"] == "DENY" and r.headers["X-Content-Type-Options"] == "nosniff"
                assert "default-src 'none'" in r.headers["Content-Security-Policy"]
                page = await r.text()
        async with http.get(ui + "/ui", headers=_basic("ops", "a-long-password")) as r:
            policy, page = r.headers["Content-Security-Policy"], await r.text()
        # The page's inline script and style are allowed by hash, nothing else is.
        for tag in ("script", "style"):
            (inline,) = re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.DOTALL)
            digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
            assert f"{tag}-src 'sha256-{digest}'" in policy
        assert "unsafe-inline" not in policy and "connect-src 'self'" in policy


def test_validate_warns_without_auth_beyond_loopback(tmp_path):
    exposed = tmp_path / "exposed.yaml"
    exposed.write_text(SCRAPE_YAML.replace("observertc: {endpoint: 127.0.0.1:0}", "observertc: {endpoint: 0.0.0.0:0}"))
    local = tmp_path / "local.yaml"
    local.write_text(SCRAPE_YAML)
    run = [sys.executable, "-m", "webrtc_observer", "validate", "--config"]
    result = subprocess.run([*run, str(exposed)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "warning: receivers.observertc.auth: no auth while listening on 0.0.0.0:0" in result.stderr
    result = subprocess.run([*run, str(local)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "warning" not in result.stderr


def test_secrets_are_not_in_the_config_repr():
    from webrtc_observer.components import config_types
    from webrtc_observer.config import load_text
    from webrtc_observer.testing import testing_factories

    config = load_text(_yaml(), config_types(testing_factories()))
    text = repr(config.components)
    assert TOKEN_A not in text and SECRET not in text and "svc-a" in text


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            "receivers:\n  observertc:\n    auth: {basic: {username: u, password: a-long-password}}",
            "receivers.observertc.auth.basic",
        ),
        ("receivers:\n  observertc:\n    auth: {}", "receivers.observertc.auth: set bearer_tokens, jwt or basic"),
        ("receivers:\n  observertc:\n    auth: {bearer_tokens: [{token: short}]}", "auth.bearer_tokens[0].token"),
        (f"receivers:\n  observertc:\n    auth: {{jwt: {{secret: '{SECRET}', algorithms: [RS256]}}}}", "auth.jwt.algorithms[0]"),
        (f"receivers:\n  observertc:\n    auth: {{jwt: {{secret: '{SECRET}', public_key_file: /nonexistent}}}}", "exactly one"),
        ("receivers:\n  observertc:\n    auth: {jwt: {public_key_file: /nonexistent}}", "auth.jwt.public_key_file"),
        (
            "receivers:\n  observertc: {}\nexporters:\n  prometheus:\n    auth: {bearer_tokens: [{token: 0123456789abcdefgh, service_ids: [a]}]}",
            "exporters.prometheus.auth.bearer_tokens[0].service_ids",
        ),
    ],
)
def test_auth_config_mistakes_are_reported(section, expected):
    from webrtc_observer.components import config_types
    from webrtc_observer.config import ConfigError, load_text

    with pytest.raises(ConfigError) as err:
        load_text(section, config_types())
    assert expected in str(err.value) and SECRET not in str(err.value)
