"""The outbound policy holds for every connection a source's probe and ffmpeg make: redirects,
playlists that name other hosts and https tunnels all go through the transcoder's checking proxy.
TLS sources are verified (a private CA can be named, or verification turned off).

Real servers: an allowed "third-party" host on 127.0.0.2 and a forbidden one on 127.0.0.1 (Linux
routes all of 127/8 to loopback); the operator allows only 127.0.0.2/32.
"""

from __future__ import annotations

import ssl
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
import trustme
from aiohttp import web

from tests.harness import (
    ALICE,
    Api,
    Client,
    ServiceProcess,
    System,
    eventually,
    start_system,
    stop_system,
)
from tests.media_clips import make_clip

pytestmark = pytest.mark.slow

ALLOWED = "127.0.0.2"
FORBIDDEN = "127.0.0.1"


@dataclass
class Host:
    """A web server on one loopback address that counts the requests it gets, by path."""

    address: str
    files: dict[str, Path] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)
    url: str = ""
    https_url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self, tls: ssl.SSLContext | None = None) -> Host:
        app = web.Application()
        app.router.add_get("/{name:.*}", self._serve)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.address, 0).start()
        self.url = f"http://{self.address}:{self._runner.addresses[0][1]}"
        if tls is not None:
            await web.TCPSite(self._runner, self.address, 0, ssl_context=tls).start()
            self.https_url = f"https://{self.address}:{self._runner.addresses[1][1]}"
        return self

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.hits[name] += 1
        if name in self.redirects:
            raise web.HTTPFound(self.redirects[name])
        if name in self.texts:
            return web.Response(text=self.texts[name], content_type="application/vnd.apple.mpegurl")
        if name in self.files:
            return web.FileResponse(self.files[name])  # with Range, as ffmpeg needs for mp4
        raise web.HTTPNotFound()

    @property
    def total(self) -> int:
        return sum(self.hits.values())

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture(scope="module")
def segment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short MPEG-TS segment, as an HLS playlist names them."""
    return make_clip(tmp_path_factory.mktemp("hls") / "seg.ts", seconds=1.0, container="mpegts")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path]:
    """A private CA (not in the system bundle) and its certificate file."""
    authority = trustme.CA()
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return authority, path


@pytest_asyncio.fixture
async def hosts(
    clips: dict[str, Path], segment: Path, ca: tuple[trustme.CA, Path]
) -> AsyncIterator[tuple[Host, Host]]:
    """(allowed, forbidden): the allowed host also serves https with a certificate of the
    private CA, issued for its IP address (a subjectAltName, as TLS needs for an IP host)."""
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca[0].issue_cert(ALLOWED).configure_cert(tls)
    forbidden = await Host(FORBIDDEN).start()
    allowed = await Host(ALLOWED).start(tls)
    clip = clips["fits"]
    forbidden.files.update({"latest/meta-data/a.mp4": clip, "seg.ts": segment})
    allowed.files.update({"a.mp4": clip, "seg.ts": segment})
    allowed.redirects.update(
        {
            "to-metadata.mp4": f"{forbidden.url}/latest/meta-data/a.mp4",
            "to-tls-metadata.mp4": f"https://{FORBIDDEN}:{forbidden.url.rsplit(':', 1)[1]}/a.mp4",
            "moved.mp4": "/a.mp4",
        }
    )
    allowed.texts.update(
        {
            "inside.m3u8": _playlist(f"{forbidden.url}/seg.ts"),
            "fine.m3u8": _playlist("seg.ts"),
        }
    )
    yield allowed, forbidden
    await allowed.stop()
    await forbidden.stop()


def _playlist(*segments: str) -> str:
    body = "".join(f"#EXTINF:1.0,\n{s}\n" for s in segments)
    return f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n{body}#EXT-X-ENDLIST\n"


@pytest_asyncio.fixture
async def fenced(env: dict[str, str]) -> AsyncIterator[System]:
    """A vidmesh whose operator allows the 127.0.0.2 host only (and Jellyfin, as always)."""
    system = await start_system({**env, "VIDMESH_OUTBOUND_ALLOW": f"{ALLOWED}/32"})
    yield system
    await stop_system(system)


def _refused_for_loopback(error: dict[str, str]) -> None:
    assert error["code"] == "source_refused", error
    assert "loopback" in error["reason"] and FORBIDDEN not in error["reason"], error


async def test_a_redirect_to_a_forbidden_address_is_refused_by_the_probe_and_the_job(
    fenced: System, http: aiohttp.ClientSession, hosts: tuple[Host, Host]
) -> None:
    allowed, forbidden = hosts
    ann = await Api(http, fenced.url).as_user("ann")
    source = f"{allowed.url}/to-metadata.mp4"
    # When the metadata of a source that redirects to a loopback address is asked for
    status, body, _ = await ann.call("POST", "/api/metadata", json={"source": source})
    # Then it is a clear 4xx naming the address class, not the address
    assert status == 400 and body["error"]["code"] == "outbound_refused", body
    assert "loopback" in body["error"]["message"], body
    assert FORBIDDEN not in body["error"]["message"], body
    # And a job from it fails with source_refused, not retried
    job = await ann.ok("POST", "/api/jobs", 201, json={"source": source})
    failed = await ann.wait_job(job["id"], "failed", "completed", timeout=60)
    _refused_for_loopback(failed["error"])
    assert failed["attempts"] == 1, failed
    # And the forbidden server never got a request
    assert forbidden.total == 0, forbidden.hits


async def test_an_hls_playlist_whose_segments_name_a_forbidden_address_fails(
    fenced: System, http: aiohttp.ClientSession, hosts: tuple[Host, Host]
) -> None:
    allowed, forbidden = hosts
    ann = await Api(http, fenced.url).as_user("ann")
    job = await ann.ok("POST", "/api/jobs", 201, json={"source": f"{allowed.url}/inside.m3u8"})
    failed = await ann.wait_job(job["id"], "failed", "completed", timeout=60)
    _refused_for_loopback(failed["error"])
    assert forbidden.hits["seg.ts"] == 0, forbidden.hits


async def test_an_https_tunnel_to_a_forbidden_address_is_refused(
    fenced: System, http: aiohttp.ClientSession, hosts: tuple[Host, Host]
) -> None:
    allowed, forbidden = hosts
    ann = await Api(http, fenced.url).as_user("ann")
    source = f"{allowed.url}/to-tls-metadata.mp4"
    job = await ann.ok("POST", "/api/jobs", 201, json={"source": source})
    failed = await ann.wait_job(job["id"], "failed", "completed", timeout=60)
    _refused_for_loopback(failed["error"])
    assert forbidden.total == 0, forbidden.hits


async def test_the_streamyfin_face_keeps_to_jellyfin_and_the_policy(
    fenced: System, http: aiohttp.ClientSession, hosts: tuple[Host, Host]
) -> None:
    allowed, forbidden = hosts
    alice = Client(http, fenced.url, ALICE)
    # A private address that is neither Jellyfin nor allowed is refused at submission
    for url in ("http://10.1.2.3/a.mp4", f"{forbidden.url}/a.mp4"):
        payload = {"url": url, "deviceId": "phone", "itemId": "x"}
        status, body, _ = await alice.request("POST", "/optimize-version", json=payload)
        assert status == 400 and body["error"]["code"] == "outbound_refused", (url, body)
    # An allowed source that leads to a forbidden address fails when ffmpeg is sent there
    job_id = await alice.submit(f"{allowed.url}/to-metadata.mp4")
    job = await alice.wait_status(job_id, "failed", "completed", timeout=60)
    assert job["status"] == "failed" and "loopback" in job["error"], job
    assert forbidden.total == 0, forbidden.hits


async def test_sources_on_allowed_addresses_still_work_through_the_proxy(
    fenced: System, http: aiohttp.ClientSession, hosts: tuple[Host, Host]
) -> None:
    allowed, _ = hosts
    ann = await Api(http, fenced.url).as_user("ann")
    probe = await ann.ok("POST", "/api/metadata", json={"source": f"{allowed.url}/moved.mp4"})
    assert probe["streams"] and probe["duration"] > 1
    # A redirect within allowed addresses, and a playlist whose segments stay there
    for path in ("moved.mp4", "fine.m3u8"):
        job = await ann.ok("POST", "/api/jobs", 201, json={"source": f"{allowed.url}/{path}"})
        done = await ann.wait_job(job["id"], "completed", "failed", timeout=60)
        assert done["status"] == "completed", done
    assert allowed.hits["a.mp4"] >= 2 and allowed.hits["seg.ts"] >= 1, allowed.hits


async def test_https_sources_are_verified_against_the_configured_authorities(
    env: dict[str, str],
    http: aiohttp.ClientSession,
    hosts: tuple[Host, Host],
    ca: tuple[trustme.CA, Path],
) -> None:
    allowed, _ = hosts
    source = f"{allowed.https_url}/a.mp4"
    base = {**env, "VIDMESH_OUTBOUND_ALLOW": f"{ALLOWED}/32"}
    system = await start_system(base, "scheduler", "storage", "statistics", "gateway")
    try:
        ann = await Api(http, system.url).as_user("ann")
        for extra, completes in (
            ({}, False),  # a private CA the system bundle does not hold
            ({"VIDMESH_SOURCE_CA_FILE": str(ca[1])}, True),
            ({"VIDMESH_SOURCE_TLS_VERIFY": "false"}, True),
        ):
            system.env = {**base, **extra}
            await system.start("transcoder")
            status, body, _ = await ann.call("POST", "/api/metadata", json={"source": source})
            assert (status == 200) is completes, (extra, status, body)
            job = await ann.ok("POST", "/api/jobs", 201, json={"source": source})
            done = await ann.wait_job(job["id"], "completed", "failed", timeout=60)
            if completes:
                assert done["status"] == "completed", (extra, done)
            else:
                assert done["status"] == "failed", done
                assert done["error"]["code"] == "source_untrusted", done["error"]
                assert "certificate" in done["error"]["reason"], done["error"]
            await system.stop("transcoder")
    finally:
        await stop_system(system)


async def test_a_playlist_under_a_media_root_cannot_reach_the_network(
    env: dict[str, str], http: aiohttp.ClientSession, hosts: tuple[Host, Host], tmp_path: Path
) -> None:
    allowed, _ = hosts
    media = tmp_path / "media"
    media.mkdir()
    (media / "list.m3u8").write_text(_playlist(f"{allowed.url}/seg.ts"))
    system = await start_system(
        {**env, "VIDMESH_MEDIA_ROOTS": str(media), "VIDMESH_OUTBOUND_ALLOW": f"{ALLOWED}/32"}
    )
    try:
        ann = await Api(http, system.url).as_user("ann")
        job = await ann.ok("POST", "/api/jobs", 201, json={"source": str(media / "list.m3u8")})
        failed = await ann.wait_job(job["id"], "failed", "completed", timeout=60)
        assert failed["status"] == "failed", failed
        # a file source is read with the file protocol only: not even an allowed host is asked
        assert allowed.hits["seg.ts"] == 0, allowed.hits
    finally:
        await stop_system(system)


async def test_no_proxy_in_the_environment_does_not_open_a_way_around_the_policy(
    env: dict[str, str],
    http: aiohttp.ClientSession,
    hosts: tuple[Host, Host],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # ffmpeg and PyAV connect directly to hosts named in no_proxy, past any proxy
    monkeypatch.setenv("no_proxy", "*")
    allowed, forbidden = hosts
    system = await start_system({**env, "VIDMESH_OUTBOUND_ALLOW": f"{ALLOWED}/32"})
    try:
        ann = await Api(http, system.url).as_user("ann")
        source = f"{allowed.url}/to-metadata.mp4"
        status, body, _ = await ann.call("POST", "/api/metadata", json={"source": source})
        assert status == 400 and body["error"]["code"] == "outbound_refused", body
        job = await ann.ok("POST", "/api/jobs", 201, json={"source": source})
        failed = await ann.wait_job(job["id"], "failed", "completed", timeout=60)
        _refused_for_loopback(failed["error"])
        assert forbidden.total == 0, forbidden.hits
    finally:
        await stop_system(system)


VOBSUB_INDEX = (
    "# VobSub index file, v7 (do not modify this line!)\n"
    "size: 720x480\nid: en, index: 0\ntimestamp: 00:00:00:000, filepos: 000000000\n"
)


async def test_the_probe_verifies_the_https_servers_an_http_playlist_leads_to(
    env: dict[str, str],
    http: aiohttp.ClientSession,
    hosts: tuple[Host, Host],
    ca: tuple[trustme.CA, Path],
) -> None:
    # PyAV verifies only the connection it is handed `tls_verify` for: an http playlist naming
    # https segments and keys had them fetched from a server whose certificate nobody checked.
    allowed, _ = hosts
    allowed.texts.update(
        {
            "tls-segments.m3u8": _playlist(f"{allowed.https_url}/seg.ts"),
            "tls-key.m3u8": _playlist("seg.ts").replace(
                "#EXTINF",
                f'#EXT-X-KEY:METHOD=AES-128,URI="{allowed.https_url}/k.key"\n#EXTINF',
                1,
            ),
            "k.key": "0123456789abcdef",
        }
    )
    base = {**env, "VIDMESH_OUTBOUND_ALLOW": f"{ALLOWED}/32"}
    system = await start_system(base, "scheduler", "storage", "statistics", "gateway")
    try:
        ann = await Api(http, system.url).as_user("ann")
        await system.start("transcoder")
        for path in ("tls-segments.m3u8", "tls-key.m3u8"):
            source = f"{allowed.url}/{path}"
            status, body, _ = await ann.call("POST", "/api/metadata", json={"source": source})
            # Then the probe fails for the certificate, and the https server got no request
            assert status != 200, (path, body)
            assert "certificate" in body["error"]["message"], (path, body)
        assert allowed.hits["seg.ts"] == 0 and allowed.hits["k.key"] == 0, allowed.hits
        await system.stop("transcoder")
        # With the private CA named, the same https segments are read (probe and ffmpeg)
        system.env = {**base, "VIDMESH_SOURCE_CA_FILE": str(ca[1])}
        await system.start("transcoder")
        source = f"{allowed.url}/tls-segments.m3u8"
        probe = await ann.ok("POST", "/api/metadata", json={"source": source})
        assert probe["container"] == "hls" and probe["streams"], probe
        job = await ann.ok("POST", "/api/jobs", 201, json={"source": source})
        done = await ann.wait_job(job["id"], "completed", "failed", timeout=60)
        assert done["status"] == "completed", done
    finally:
        await stop_system(system)


async def test_nested_opens_without_the_probe_options_still_go_through_a_checking_proxy(
    env: dict[str, str],
    http: aiohttp.ClientSession,
    hosts: tuple[Host, Host],
    tmp_path: Path,
) -> None:
    # A VobSub index makes libavformat open its .sub without the options the probe was given,
    # so PyAV falls back on the process's `http_proxy`: here an operator's proxy on a forbidden
    # address, which a source could then reach past the policy.
    allowed, forbidden = hosts
    allowed.texts["subs.idx"] = VOBSUB_INDEX
    settings = {**env, "VIDMESH_OUTBOUND_ALLOW": f"{ALLOWED}/32"}
    # the transcoder as its own process, as deployed, whose environment names that proxy
    system = await start_system(settings, "scheduler", "storage", "statistics", "gateway")
    transcoder = ServiceProcess(
        "transcoder", {**settings, "http_proxy": forbidden.url}, tmp_path / "transcoder.log"
    ).start()
    try:
        await eventually(lambda: '"service.ready"' in transcoder.log(), what="the transcoder")
        ann = await Api(http, system.url).as_user("ann")
        source = f"{allowed.url}/subs.idx"
        await ann.call("POST", "/api/metadata", json={"source": source})
        job = await ann.ok("POST", "/api/jobs", 201, json={"source": source})
        await ann.wait_job(job["id"], "failed", "completed", timeout=60)
        assert allowed.hits["subs.sub"] >= 1, allowed.hits  # asked, through a checking proxy
        assert forbidden.total == 0, forbidden.hits
    finally:
        transcoder.terminate()
        await stop_system(system)
