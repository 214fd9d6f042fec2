"""The transcoder's source proxy decides on the address it connects to: names are resolved and
every address checked (a name cannot lead past the policy), trusted origins pass, and https goes
through a CONNECT tunnel it checks the same way. Fast: no NATS, real sockets."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
import trustme
from aiohttp import web

from services.transcoder import TranscoderSettings
from services.transcoder.source_proxy import SourceProxy
from shared import config
from shared.outbound import OutboundPolicy

POLICY = OutboundPolicy.parse("127.0.0.2/32")


async def _serve(address: str, tls: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello from {address}")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, address, 0, ssl_context=tls).start()
    return runner, runner.addresses[0][1]


@pytest_asyncio.fixture
async def servers() -> AsyncIterator[dict[str, int]]:
    """Plain http on 127.0.0.2 (allowed) and 127.0.0.1 (loopback, refused)."""
    allowed, allowed_port = await _serve("127.0.0.2")
    refused, refused_port = await _serve("127.0.0.1")
    yield {"allowed": allowed_port, "refused": refused_port}
    await allowed.cleanup()
    await refused.cleanup()


async def _get(proxy: SourceProxy, url: str, **kwargs: object) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, proxy=proxy.url, **kwargs) as resp,  # type: ignore[arg-type]
    ):
        return resp.status, await resp.text()


async def test_an_allowed_address_is_reached_and_nothing_is_refused(
    servers: dict[str, int],
) -> None:
    async with SourceProxy(POLICY) as proxy:
        status, body = await _get(proxy, f"http://127.0.0.2:{servers['allowed']}/")
    assert (status, body) == (200, "hello from 127.0.0.2")
    assert proxy.refusal is None


async def test_names_and_odd_notations_are_checked_on_the_address_they_resolve_to(
    servers: dict[str, int],
) -> None:
    port = servers["refused"]
    for host in ("localhost", "2130706433", "127.1", "[::ffff:127.0.0.1]"):
        async with SourceProxy(POLICY) as proxy:
            status, _ = await _get(proxy, f"http://{host}:{port}/")
        assert status == 403, host
        assert proxy.refusal == "a loopback address", host


async def test_a_cloud_metadata_address_is_refused_even_when_its_network_is_allowed() -> None:
    policy = OutboundPolicy.parse("169.254.0.0/16")
    async with SourceProxy(policy) as proxy:
        status, _ = await _get(proxy, "http://169.254.169.254/latest/meta-data/")
    assert status == 403 and proxy.refusal == "a cloud metadata address"


async def test_a_trusted_origin_is_reached_on_its_own_port_only(servers: dict[str, int]) -> None:
    port = servers["refused"]
    policy = OutboundPolicy.parse("", trust=[f"http://127.0.0.1:{port}"])
    async with SourceProxy(policy) as proxy:
        assert (await _get(proxy, f"http://127.0.0.1:{port}/"))[0] == 200
        assert (await _get(proxy, f"http://127.0.0.1:{port + 1}/"))[0] == 403


async def test_https_goes_through_a_checked_connect_tunnel(servers: dict[str, int]) -> None:
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.2").configure_cert(server_tls)
    runner, port = await _serve("127.0.0.2", server_tls)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    try:
        async with SourceProxy(POLICY) as proxy:
            status, body = await _get(proxy, f"https://127.0.0.2:{port}/", ssl=client_tls)
            assert (status, body) == (200, "hello from 127.0.0.2")
            refused = f"https://127.0.0.1:{servers['refused']}/"
            with pytest.raises(aiohttp.ClientHttpProxyError) as refusal:
                await _get(proxy, refused, ssl=client_tls)
            assert refusal.value.status == 403
            assert proxy.refusal == "a loopback address"
    finally:
        await runner.cleanup()


def test_a_source_ca_file_that_does_not_exist_stops_the_transcoder_at_start(
    tmp_path: Path,
) -> None:
    missing = str(tmp_path / "nowhere.pem")
    with pytest.raises(SystemExit, match="nowhere.pem"):
        config.load(TranscoderSettings, {"VIDMESH_SOURCE_CA_FILE": missing})
    settings = config.load(TranscoderSettings, {"VIDMESH_SOURCE_TLS_VERIFY": "false"})
    assert settings.source_tls.verify is False
    # by default https sources are verified against the system's CA bundle
    default = config.load(TranscoderSettings, {}).source_tls
    assert default.verify and default.ca_file and Path(default.ca_file).is_file()
