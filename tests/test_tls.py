"""TLS on every HTTP endpoint: receiver, /metrics and /ui; certificates reloaded on SIGHUP; mutual TLS."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
from pathlib import Path

import aiohttp
import pytest
import trustme

from webrtc_observer import testing
from webrtc_observer.components import config_types
from webrtc_observer.config import ConfigError, load_text
from webrtc_observer.testing import running_collector

from ._samples import client_sample_v2 as client_sample


def _files(tmp_path: Path, ca: trustme.CA, name: str) -> tuple[Path, Path]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert.private_key_pem.write_to_path(str(key_file))
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return cert_file, key_file


def _client_context(ca: trustme.CA, client: trustme.LeafCert | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if client is not None:
        client.configure_cert(context)
    return context


def _yaml(cert: Path, key: Path, client_ca: Path | None = None) -> str:
    tls = f"{{cert_file: {cert}, key_file: {key}" + (f", client_ca_file: {client_ca}" if client_ca else "") + "}"
    return f"""
receivers:
  observertc:
    endpoint: 127.0.0.1:0
    tls: {tls}
exporters:
  recording: {{}}
  prometheus:
    endpoint: 127.0.0.1:0
    tls: {tls}
  liveview:
    endpoint: 127.0.0.1:0
    tls: {tls}
service:
  pipelines:
    samples:
      receivers: [observertc]
      exporters: [recording, prometheus, liveview]
"""


async def _served_certificate(port: int, context: ssl.SSLContext) -> bytes:
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return der


async def test_receiver_metrics_and_ui_over_tls_and_reload_on_sighup(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key = _files(tmp_path, ca, "server")
    context = _client_context(ca)
    async with running_collector(_yaml(cert, key)) as c:
        base = f"https://127.0.0.1:{c.port()}"
        metrics = c.exporter("prometheus").bound_port
        ui = c.exporter("liveview").bound_port
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            async with session.post(f"{base}/rest/samples/svc/web", json=client_sample("c-tls")) as resp:
                assert resp.status == 202, await resp.text()
            async with session.get(f"https://127.0.0.1:{metrics}/metrics") as resp:
                assert resp.status == 200
                assert "observertc_" in await resp.text()
            async with session.get(f"https://127.0.0.1:{ui}/ui") as resp:
                assert resp.status == 200
            async with session.ws_connect(f"wss://127.0.0.1:{c.port()}/samples/svc/web") as ws:
                await ws.send_str(json.dumps(client_sample("c-wss")))
            await c.exporter().wait_for_samples(2)
        # Plain HTTP on a TLS port gets no answer.
        async with aiohttp.ClientSession() as plain:
            with pytest.raises(aiohttp.ClientError):
                async with plain.get(f"http://127.0.0.1:{c.port()}/health") as resp:
                    await resp.read()

        before = await _served_certificate(c.port(), context)
        renewed = trustme.CA()
        new_cert, new_key = _files(tmp_path, renewed, "renewed")
        os.replace(new_cert, cert)
        os.replace(new_key, key)
        assert await _served_certificate(c.port(), context) == before  # not yet: nothing told it
        os.kill(os.getpid(), signal.SIGHUP)
        new_context = _client_context(renewed)
        for port in (c.port(), metrics, ui):
            for _ in range(100):  # the signal handler runs on a later loop iteration
                try:
                    after = await _served_certificate(port, new_context)
                    break
                except ssl.SSLError:
                    await asyncio.sleep(0.02)
            else:
                raise AssertionError(f"port {port} still serves the old certificate after SIGHUP")
            assert after != before


async def test_client_certificate_required_with_client_ca(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key = _files(tmp_path, ca, "server")
    client_ca = trustme.CA()
    client_ca_file = tmp_path / "client-ca.pem"
    client_ca.cert_pem.write_to_path(str(client_ca_file))
    async with running_collector(_yaml(cert, key, client_ca_file)) as c:
        url = f"https://127.0.0.1:{c.port()}/rest/samples/svc/web"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=_client_context(ca))) as anonymous:
            with pytest.raises(aiohttp.ClientError):
                async with anonymous.post(url, json=client_sample("c-anon")) as resp:
                    await resp.read()
        stranger = trustme.CA().issue_cert("someone")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=_client_context(ca, stranger))) as other:
            with pytest.raises(aiohttp.ClientError):
                async with other.post(url, json=client_sample("c-other")) as resp:
                    await resp.read()
        known = client_ca.issue_cert("browser-gateway")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=_client_context(ca, known))) as good:
            async with good.post(url, json=client_sample("c-mtls")) as resp:
                assert resp.status == 202, await resp.text()
        assert [s.client_id for s in c.exporter().client_samples] == ["c-mtls"]


def test_tls_config_errors_name_the_yaml_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError) as caught:
        load_text(_yaml(missing, missing), config_types(testing.testing_factories()))
    text = str(caught.value)
    assert f"receivers.observertc.tls.cert_file: file not found: {missing}" in text
    assert "exporters.prometheus.tls.key_file" in text
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ConfigError) as caught:
        load_text(_yaml(garbage, garbage), config_types(testing.testing_factories()))
    assert "receivers.observertc.tls.cert_file: cannot load the certificate and key" in str(caught.value)
