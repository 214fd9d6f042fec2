"""Where the server may send requests: one outbound policy for webhooks, `notify_url` and http(s)
job sources.

Refused unless an operator allows their network (`VIDMESH_OUTBOUND_ALLOW`, comma-separated CIDRs):
loopback, link-local, private and unique-local, multicast, unspecified and every other non-public
address. Cloud metadata endpoints (169.254.169.254, fd00:ec2::254, metadata.google.internal, ...)
are refused even then. The configured Jellyfin server (its host and port) is always allowed.

Checked three times: on the URL as written (`check_url`: scheme, IP literals in any notation, known
names), after DNS resolution (`PolicyResolver` drops refused addresses before aiohttp connects, so
a name cannot send the client anywhere else), and on every redirect (followed by hand, each hop
checked again).
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from types import TracebackType
from typing import Self

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from shared.errors import BadRequest

IP = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

METADATA_ADDRESSES: frozenset[IP] = frozenset(
    ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean...
        "169.254.170.2",  # AWS ECS task credentials
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
    )
)
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "instance-data"})
_NAT64 = ip_network("64:ff9b::/96")
_NUMERIC_HOST = re.compile(r"^[0-9a-fA-FxX.]+$")
REDIRECTS = frozenset({301, 302, 303, 307, 308})
ALLOW_HINT = "an operator can allow its network with VIDMESH_OUTBOUND_ALLOW"


class OutboundRefused(BadRequest):
    """The policy refuses to send a request to this address."""

    code = "outbound_refused"


@dataclass(frozen=True, slots=True)
class OutboundPolicy:
    """Networks an operator allows beyond the public internet, and origins always allowed."""

    allowed: tuple[Network, ...] = ()
    # (host, port) pairs always allowed: the configured Jellyfin server.
    trusted: frozenset[tuple[str, int]] = frozenset()

    @classmethod
    def parse(cls, allow: str = "", *, trust: Iterable[str] = ()) -> OutboundPolicy:
        """A policy from `VIDMESH_OUTBOUND_ALLOW` and the URLs of servers always allowed."""
        networks: list[Network] = []
        for part in allow.split(","):
            if not part.strip():
                continue
            try:
                networks.append(ip_network(part.strip(), strict=False))
            except ValueError:
                raise ValueError(
                    f"VIDMESH_OUTBOUND_ALLOW: {part.strip()!r} is not a network "
                    "(write CIDRs such as 10.0.0.0/8 or fd00::/8, separated by commas)"
                ) from None
        origins: set[tuple[str, int]] = set()
        for url in trust:
            origin = _origin(url)
            if origin is not None:
                origins.add(origin)
        return cls(tuple(networks), frozenset(origins))

    def refusal(self, ip: IP) -> str | None:
        """Why a connection to `ip` is refused (None: it is allowed)."""
        ip = _embedded_ipv4(ip)
        if ip in METADATA_ADDRESSES:
            return "a cloud metadata address"
        if any(ip.version == net.version and ip in net for net in self.allowed):
            return None
        return _non_public(ip)

    def is_trusted(self, host: str, port: int | None) -> bool:
        return (_normal_host(host), port or 0) in self.trusted


@lru_cache(maxsize=16)
def policy_for(allow: str, *trust: str) -> OutboundPolicy:
    """The policy for these settings, parsed once (raises ValueError on a bad network)."""
    return OutboundPolicy.parse(allow, trust=trust)


def check_url(url: str, policy: OutboundPolicy, *, what: str = "The URL") -> None:
    """Refuse (BadRequest) a URL that is not http(s) or that names a refused address as written:
    an IP literal in any notation, localhost, or a metadata host. Names are checked again after
    DNS resolution when a request is made (`OutboundClient`), or by `check_url_resolved`."""
    host, port = _host_and_port(url, what)
    if policy.is_trusted(host, port):
        return
    reason = _static_refusal(host, policy)
    if reason is not None:
        raise OutboundRefused(_refused_message(what, host, f"it is {reason}"))


async def check_url_resolved(
    url: str,
    policy: OutboundPolicy,
    *,
    what: str = "The URL",
    resolver: AbstractResolver | None = None,
    timeout: float = 5.0,
) -> None:
    """`check_url`, then resolve the host name and refuse it if any address it has is refused."""
    check_url(url, policy, what=what)
    host, port = _host_and_port(url, what)
    if policy.is_trusted(host, port) or _literal_ip(host) is not None:
        return
    inner = resolver or aiohttp.ThreadedResolver()
    try:
        async with asyncio.timeout(timeout):
            found = await inner.resolve(host, port, family=socket.AF_UNSPEC)
    except (OSError, TimeoutError) as exc:
        raise BadRequest(f"{what}: the host {host} cannot be resolved ({exc}).") from None
    finally:
        if resolver is None:
            await inner.close()
    for result in found:
        reason = policy.refusal(_address_of(result))
        if reason is not None:
            # the kind of address only: its value would map the operator's network for anyone
            message = f"it resolves to {reason}"
            raise OutboundRefused(_refused_message(what, host, message))


class PolicyResolver(AbstractResolver):
    """A resolver that keeps only the addresses the policy allows (refuses when none is left)."""

    def __init__(self, policy: OutboundPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner or aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        name = _normal_host(host)
        if name in METADATA_HOSTS and not self.policy.is_trusted(name, port):
            reason = "it is a cloud metadata host"
            raise OutboundRefused(_refused_message("The request", name, reason))
        results = await self.inner.resolve(host, port, family)
        if self.policy.is_trusted(name, port):
            return results
        kept: list[ResolveResult] = []
        reason = "it has no address"
        for result in results:
            refused = self.policy.refusal(_address_of(result))
            if refused is None:
                kept.append(result)
            else:
                reason = f"it resolves to {refused}"
        if not kept:
            raise OutboundRefused(_refused_message("The request", name, reason))
        return kept

    async def close(self) -> None:
        await self.inner.close()


@dataclass(frozen=True, slots=True)
class Exchange:
    """A request that got an answer: where it ended up, and the first bytes of the answer."""

    url: str
    status: int
    headers: dict[str, str]
    body: bytes
    duration_ms: float
    redirects: list[str] = field(default_factory=list)


class OutboundClient:
    """HTTP requests under the policy: resolved addresses checked, redirects followed by hand."""

    def __init__(
        self,
        policy: OutboundPolicy,
        *,
        resolver: AbstractResolver | None = None,
        user_agent: str = "vidmesh",
    ) -> None:
        self.policy = policy
        self.user_agent = user_agent
        self._resolver = PolicyResolver(policy, resolver)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(resolver=self._resolver, limit=0)
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=False, headers={"User-Agent": self.user_agent}
            )
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        timeout: float = 10.0,
        max_redirects: int = 5,
        read_limit: int = 4096,
    ) -> Exchange:
        """Send a request and read the first `read_limit` bytes of the answer.

        Raises OutboundRefused (a hop the policy refuses), aiohttp.ClientError (including too
        many redirects) or TimeoutError (`timeout` covers every hop together).
        """
        started = time.monotonic()
        hops: list[str] = []
        current = url
        async with asyncio.timeout(timeout):
            for _ in range(max_redirects + 1):
                check_url(current, self.policy, what="The request")
                async with self._client().request(
                    method, current, headers=headers, data=body, allow_redirects=False
                ) as resp:
                    location = resp.headers.get("Location")
                    if resp.status in REDIRECTS and location:
                        current = str(URL(current).join(URL(location)))
                        hops.append(current)
                        if resp.status == 303 or (resp.status in (301, 302) and method == "POST"):
                            method, body = "GET", None
                        continue
                    data = await resp.content.read(read_limit)
                    return Exchange(
                        url=current,
                        status=resp.status,
                        headers=dict(resp.headers),
                        body=data,
                        duration_ms=round((time.monotonic() - started) * 1000, 1),
                        redirects=hops,
                    )
        raise aiohttp.ClientError(f"more than {max_redirects} redirects")


def _host_and_port(url: str, what: str) -> tuple[str, int]:
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        raise BadRequest(f"{what} is not a valid URL.") from None
    if parsed.scheme not in ("http", "https"):
        raise BadRequest(f"{what} must be an http:// or https:// URL.")
    if not parsed.raw_host:
        raise BadRequest(f"{what} has no host.")
    return _normal_host(parsed.raw_host), parsed.port or 0


def _origin(url: str) -> tuple[str, int] | None:
    try:
        parsed = URL(url.strip())
    except (ValueError, TypeError):
        return None
    if not parsed.raw_host or parsed.scheme not in ("http", "https"):
        return None
    return _normal_host(parsed.raw_host), parsed.port or 0


def _normal_host(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


def _static_refusal(host: str, policy: OutboundPolicy) -> str | None:
    if host in METADATA_HOSTS:
        return "a cloud metadata host"
    if host == "localhost" or host.endswith(".localhost"):
        return policy.refusal(IPv4Address("127.0.0.1"))
    ip = _literal_ip(host)
    return policy.refusal(ip) if ip is not None else None


def _literal_ip(host: str) -> IP | None:
    """The address a host written as an IP literal names, in any notation a resolver accepts
    (2130706433, 0x7f.1 and 127.1 all name 127.0.0.1)."""
    try:
        return ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    if _NUMERIC_HOST.match(host):
        try:
            return IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _address_of(result: ResolveResult) -> IP:
    return ip_address(result["host"].split("%", 1)[0])


def _embedded_ipv4(ip: IP) -> IP:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4), else `ip` itself."""
    if isinstance(ip, IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.sixtofour is not None:
            return ip.sixtofour
    return ip


def _non_public(ip: IP) -> str | None:
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, IPv6Address) and ip in ip_network("fc00::/7"):
        return "a unique-local address"
    if ip.is_private:
        return "a private network address"
    if not ip.is_global:
        return "a reserved, non-public address"
    return None


def _refused_message(what: str, host: str, reason: str) -> str:
    hint = "" if "metadata" in reason else f" ({ALLOW_HINT})"
    return f"{what} may not go to {host}: {reason}{hint}."
