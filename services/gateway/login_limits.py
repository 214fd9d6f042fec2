"""Failed sign-ins are limited per username and per client address.

Counts live in a NATS KV bucket (compare-and-set increments), so every gateway replica shares
them and a restart forgets nothing. Each attempt first takes a place in both counts; a refused
password keeps it, anything else gives it back. So concurrent guesses cannot all slip under the
limit. A successful sign-in clears the username's failures (the password is known) but not the
address's: one address may hold one account of its own and guess at others, and a success of
its own must not wipe its record.

The client address is the peer's; X-Forwarded-For is believed only when the peer is a proxy
the operator trusts (`VIDMESH_TRUSTED_PROXIES`), reading from the right past trusted hops.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import math
import secrets
import time
import weakref
from asyncio import Lock
from collections.abc import AsyncIterator

import structlog

from shared.errors import TooManyRequests, Unauthorized
from shared.messages.accounts import LoginFailures
from shared.nats.kv import TypedKV

log = structlog.get_logger("vidmesh.gateway.login_limits")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted_networks(proxies: list[str]) -> list[Network]:
    """The operator's trusted proxies as networks; a wrong entry stops the start."""
    try:
        return [ipaddress.ip_network(item, strict=False) for item in proxies]
    except ValueError as exc:
        raise SystemExit(f"VIDMESH_TRUSTED_PROXIES: {exc}") from None


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address, IPv4 written as IPv6 (`::ffff:a.b.c.d`, as a dual-stack socket or proxy
    writes it) taken as the IPv4 address it is."""
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def client_address(peer: str | None, forwarded_for: str, proxies: list[str]) -> str:
    """Who is signing in: the peer, or behind trusted proxies the rightmost forwarded address
    that is not one of them (addresses further left are the client's to invent)."""
    networks = trusted_networks(proxies)
    peer_ip = _ip(peer or "")
    address = str(peer_ip) if peer_ip is not None else peer or "unknown"

    def trusted(value: str) -> bool:
        ip = _ip(value)
        return ip is not None and any(ip in network for network in networks)

    if not networks or not trusted(address):
        return address
    for hop in reversed([part.strip() for part in forwarded_for.split(",") if part.strip()]):
        hop_ip = _ip(hop)
        if hop_ip is None:
            return address  # a hop that is no address: believe nothing further left
        if not trusted(hop):
            return str(hop_ip)
        address = str(hop_ip)
    return address


def counted_as(address: str) -> str:
    """What one client is for the per-address count: an IPv4 address, or an IPv6 address's
    /64 (one subscriber is handed a whole /64, and could spread guesses over all of it)."""
    ip = _ip(address)
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip) if ip is not None else address


class LoginLimits:
    """Failed sign-ins per username and per client address, `limit` per `window` seconds."""

    def __init__(self, counts: TypedKV[LoginFailures], *, limit: int, window: float) -> None:
        self.counts = counts
        self.limit = limit
        self.window = window
        # One change at a time per key in this replica: compare-and-set settles the rest.
        self._locks: weakref.WeakValueDictionary[str, Lock] = weakref.WeakValueDictionary()

    @contextlib.asynccontextmanager
    async def attempt(self, username: str, address: str) -> AsyncIterator[None]:
        """Take a place in both counts (429 when either is full), then run the sign-in: a
        wrong password keeps the places, a success clears the username's."""
        user_key = _key("user", username.strip().lower())
        address_key = _key("addr", counted_as(address))
        await self._take(address_key)
        try:
            await self._take(user_key)
        except BaseException:
            await self._give_back(address_key)
            raise
        try:
            yield
        except Unauthorized:
            log.info("login.failed", address=address)
            raise
        except BaseException:
            await self._give_back(address_key)
            await self._give_back(user_key)
            raise
        await self._give_back(address_key)
        await self._clear(user_key)

    async def _take(self, key: str) -> None:
        now = time.time()

        def take(found: LoginFailures | None) -> LoginFailures:
            if found is None or found.since + self.window <= now:
                return LoginFailures(failures=1, since=now, nonce=secrets.token_hex(4))
            if found.failures >= self.limit:
                wait = max(1, math.ceil(found.since + self.window - now))
                raise TooManyRequests(
                    f"Too many failed sign-ins; try again in {wait} seconds.", retry_after=wait
                )
            return LoginFailures(
                failures=found.failures + 1, since=found.since, nonce=secrets.token_hex(4)
            )

        async with self._lock(key):
            await self.counts.change(key, take)

    async def _give_back(self, key: str) -> None:
        def give_back(found: LoginFailures | None) -> LoginFailures | None:
            if found is None or found.failures <= 0:
                return None
            return LoginFailures(
                failures=found.failures - 1, since=found.since, nonce=secrets.token_hex(4)
            )

        with contextlib.suppress(Exception):  # at worst one attempt counts that should not
            async with self._lock(key):
                await self.counts.change(key, give_back)

    async def _clear(self, key: str) -> None:
        with contextlib.suppress(Exception):
            async with self._lock(key):
                await self.counts.delete(key)

    def _lock(self, key: str) -> Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = Lock()
        return lock


def _key(kind: str, value: str) -> str:
    """A KV-safe key that keeps no username or address in the clear."""
    return f"{kind}.{hashlib.sha256(value.encode()).hexdigest()[:40]}"
