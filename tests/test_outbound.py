"""The outbound policy: the server never sends a request to loopback, private, link-local,
multicast, unspecified or cloud-metadata addresses (whatever the URL, DNS or a redirect says)
unless an operator allows that network; metadata endpoints not even then.

No test here connects anywhere but a receiver on 127.0.0.1; names resolve through a stand-in
resolver, so a refused address is refused before any connection is tried.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from shared.errors import BadRequest
from shared.outbound import (
    OutboundClient,
    OutboundPolicy,
    OutboundRefused,
    PolicyResolver,
    check_url,
    check_url_resolved,
)
from tests.harness import free_port

NOTHING = OutboundPolicy.parse("")
LOOPBACK = OutboundPolicy.parse("127.0.0.0/8")


class StandInResolver(AbstractResolver):
    """Answers from a table, as a DNS server that an attacker controls might."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        name = host.rstrip(".")
        if name not in self.table:
            raise OSError(f"{name} does not resolve")
        return [
            ResolveResult(
                hostname=name,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.table[name]
        ]

    async def close(self) -> None:
        pass


class Site:
    """A receiver on 127.0.0.1 that answers /ok, and redirects /go?to=<url>."""

    def __init__(self) -> None:
        self.port = free_port()
        self.runner: web.AppRunner | None = None
        self.hits: list[tuple[str, str]] = []

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/ok", self.ok)
        app.router.add_route("*", "/go", self.go)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def ok(self, request: web.Request) -> web.Response:
        self.hits.append((request.method, (await request.read()).decode()))
        return web.Response(text="fine")

    async def go(self, request: web.Request) -> web.Response:
        self.hits.append((request.method, "redirect"))
        status = int(request.query.get("status", "302"))
        return web.Response(status=status, headers={"Location": request.query["to"]})


@pytest_asyncio.fixture
async def site() -> AsyncIterator[Site]:
    running = Site()
    await running.start()
    yield running
    assert running.runner is not None
    await running.runner.cleanup()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/", "loopback"),
        ("http://localhost:8080/", "loopback"),
        ("http://2130706433/", "loopback"),  # 127.0.0.1 as one number
        ("http://0x7f.1/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://10.1.2.3/", "private"),
        ("http://192.168.1.10/", "private"),
        ("http://172.16.0.1/", "private"),
        ("http://[fd12:3456::1]/", "unique-local"),
        ("http://[::ffff:10.0.0.1]/", "private"),  # IPv4-mapped IPv6
        ("http://169.254.10.1/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://224.0.0.1/", "multicast"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://100.64.0.1/", "non-public"),  # carrier-grade NAT
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://[fd00:ec2::254]/", "metadata"),
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
    ],
)
def test_urls_naming_non_public_addresses_are_refused(url: str, reason: str) -> None:
    with pytest.raises(OutboundRefused) as refused:
        check_url(url, NOTHING)
    assert reason in refused.value.message and refused.value.http_status == 400


def test_public_urls_pass_and_other_schemes_are_refused() -> None:
    check_url("https://hooks.example.com/in?token=1", NOTHING)
    check_url("http://93.184.216.34:8080/", NOTHING)
    for url in ("ftp://example.com/", "file:///etc/passwd", "gopher://x/", "http:///nohost"):
        with pytest.raises(BadRequest):
            check_url(url, NOTHING)


def test_an_allowed_network_permits_its_addresses_but_never_metadata() -> None:
    policy = OutboundPolicy.parse("10.0.0.0/8, 169.254.0.0/16, fd00::/8")
    check_url("http://10.1.2.3/hook", policy)
    check_url("http://169.254.10.1/hook", policy)
    with pytest.raises(OutboundRefused, match="192.168.1.1"):
        check_url("http://192.168.1.1/", policy)
    for url in ("http://169.254.169.254/", "http://[fd00:ec2::254]/"):
        with pytest.raises(OutboundRefused, match="metadata"):
            check_url(url, policy)
    with pytest.raises(ValueError, match="not a network"):
        OutboundPolicy.parse("10.0.0.0/33")


def test_the_jellyfin_server_is_always_allowed_and_only_it() -> None:
    policy = OutboundPolicy.parse("", trust=["http://192.168.1.5:8096/jellyfin"])
    check_url("http://192.168.1.5:8096/Videos/1/stream", policy)
    with pytest.raises(OutboundRefused):
        check_url("http://192.168.1.5:8097/", policy)


async def test_a_name_that_resolves_to_a_private_address_is_refused_before_connecting() -> None:
    resolver = StandInResolver({"intranet.example": ["10.1.2.3"], "loop.example": ["127.0.0.1"]})
    async with OutboundClient(NOTHING, resolver=resolver) as client:
        for host, kind in (("intranet.example", "private"), ("loop.example", "loopback")):
            with pytest.raises(OutboundRefused, match=f"resolves to a {kind}") as refused:
                await client.request("GET", f"http://{host}/", timeout=5)
            assert "10.1.2.3" not in str(refused.value) and "127.0.0.1" not in str(refused.value)
    with pytest.raises(OutboundRefused, match="private network") as refused:
        await check_url_resolved("http://intranet.example/", NOTHING, resolver=resolver)
    assert "10.1.2.3" not in str(refused.value)


async def test_resolved_addresses_the_policy_refuses_are_dropped() -> None:
    resolver = StandInResolver({"mixed.example": ["10.0.0.7", "93.184.216.34"]})
    kept = await PolicyResolver(NOTHING, resolver).resolve("mixed.example", 443)
    assert [r["host"] for r in kept] == ["93.184.216.34"]


async def test_an_allowed_network_lets_requests_through(site: Site) -> None:
    async with OutboundClient(LOOPBACK) as client:
        answer = await client.request("POST", site.url("/ok"), body=b"hello", timeout=5)
    assert answer.status == 200 and answer.body == b"fine" and answer.duration_ms >= 0
    assert site.hits == [("POST", "hello")]
    async with OutboundClient(NOTHING) as client:
        with pytest.raises(OutboundRefused, match="loopback"):
            await client.request("GET", site.url("/ok"), timeout=5)
    assert len(site.hits) == 1


async def test_every_redirect_is_checked_again(site: Site) -> None:
    # Only the receiver itself is allowed (as the Jellyfin server is), not its network
    policy = OutboundPolicy.parse("", trust=[site.url("/")])
    resolver = StandInResolver({"intranet.example": ["10.1.2.3"]})
    async with OutboundClient(policy, resolver=resolver) as client:
        for target, reason in (
            ("http://169.254.169.254/latest/meta-data/", "metadata"),
            ("http://intranet.example/admin", "resolves to a private network address"),
            (f"http://127.0.0.1:{free_port()}/", "loopback"),
        ):
            with pytest.raises(OutboundRefused, match=reason):
                await client.request("GET", site.url(f"/go?to={target}"), timeout=5)
        # ... while a redirect to an allowed place is followed (307 keeps the method and body)
        answer = await client.request(
            "POST", site.url(f"/go?status=307&to={site.url('/ok')}"), body=b"again", timeout=5
        )
    assert answer.status == 200 and answer.redirects == [site.url("/ok")]
    assert site.hits[-1] == ("POST", "again")
