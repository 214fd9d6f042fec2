"""Connecting to NATS: one server or a cluster, with reconnects, and JetStream requests that ride
out a leader election (`ClusterClient`)."""

from __future__ import annotations

import asyncio
import re
import ssl
from typing import Any

import nats
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from shared.config import CommonSettings
from shared.metrics import NATS_RECONNECTS, NATS_RETRIES

log = structlog.get_logger("vidmesh.nats")

# Requests that may be sent again while a JetStream cluster fails over: JetStream API calls, KV
# writes, and publishes to streams (they carry a Nats-Msg-Id or an expected revision).
_RETRIED_SUBJECTS = ("$JS.API.", "$KV.")
_LEADERLESS = re.compile(rb'"error":\s*\{[^}]*"code":\s*503')
# After a timeout a request may have been carried out: only these are safe to send twice.
_READS = re.compile(
    r"^\$JS\.API\.(INFO|STREAM\.(INFO|NAMES|LIST|MSG\.GET)|CONSUMER\.(INFO|NAMES|LIST)|DIRECT\.GET)"
    r"(\.|$)"
)


# A snapshot or restore opens a transfer: sent twice, it would open two.
_NEVER_REPEATED = ("$JS.API.STREAM.SNAPSHOT.", "$JS.API.STREAM.RESTORE.")


def _rides_out_failover(subject: str, headers: dict[str, str] | None) -> bool:
    if subject.startswith(_NEVER_REPEATED):
        return False
    if subject.startswith(_RETRIED_SUBJECTS):
        return True
    return bool(headers) and any(h.startswith("Nats-") for h in headers or ())


def safe_twice(subject: str, headers: dict[str, str] | None) -> bool:
    """Whether a request that timed out (and so may have been carried out) can be sent again:
    a read; a KV write (a put writes the same value again; a compare-and-set that did land is
    refused the second time, and `TypedKV` recognises its own write when it reads the key
    back); or a publish JetStream de-duplicates by its Nats-Msg-Id. Never an unnamed consumer
    create or another API action: done twice, it is done twice."""
    if _READS.match(subject) or subject.startswith("$KV."):
        return True
    found = headers or {}
    return "Nats-Msg-Id" in found and not any(h.startswith("Nats-Expected") for h in found)


def _kind_of_request(subject: str) -> str:
    if subject.startswith("$JS.API."):
        return "api"
    return "kv" if subject.startswith("$KV.") else "publish"


class ClusterClient(NATS):
    """A NATS client that rides out a JetStream leader election.

    While a stream's leader is gone (killed, frozen, or its node cut off) a JetStream request gets
    no responder, times out, or is answered 503 until the others elect a new leader (seconds).
    A request that got no responder or a 503 was not carried out and is sent again for up to
    `failover_seconds`; one that timed out only when it is safe twice (`safe_twice`). Requests
    to services (probes, statistics) never are: no responder there means no service.
    """

    failover_seconds: float = 15.0

    async def request(
        self,
        subject: str,
        payload: bytes = b"",
        timeout: float = 0.5,
        old_style: bool = False,
        headers: dict[str, Any] | None = None,
    ) -> Msg:
        if not _rides_out_failover(subject, headers):
            return await super().request(subject, payload, timeout, old_style, headers)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.failover_seconds
        pause = 0.1
        while True:
            failure: Exception | None = None
            try:
                reply = await super().request(subject, payload, timeout, old_style, headers)
            except nats.errors.NoRespondersError as exc:
                failure = exc
            except nats.errors.TimeoutError as exc:
                if not safe_twice(subject, headers):
                    raise
                failure = exc
            else:
                if not _LEADERLESS.search(reply.data[:256]):
                    return reply
            if self.is_closed or loop.time() + pause > deadline:
                if failure is not None:
                    raise failure
                return reply
            NATS_RETRIES.labels(_kind_of_request(subject)).inc()
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)


async def connect(
    url: str,
    name: str,
    *,
    ping_interval: float = 5.0,
    failover_seconds: float = 15.0,
    auth: dict[str, Any] | None = None,
) -> NATS:
    """Connect with unlimited reconnects; connection changes are logged, never fatal.

    `url` may list several servers (a cluster), separated by commas. A server that stops answering
    pings for two intervals is left for another one. `auth` holds nats-py's credential and TLS
    options (`nats_auth` makes them from the settings).
    """
    client: list[NATS] = []

    def closing() -> bool:
        return bool(client) and (client[0].is_closed or client[0].is_draining)

    async def on_error(exc: Exception) -> None:
        log.warning("nats.error", error=str(exc) or type(exc).__name__)

    async def on_disconnect() -> None:
        if not closing():
            log.warning("nats.disconnected")

    async def on_reconnect() -> None:
        NATS_RECONNECTS.labels(name).inc()
        log.info("nats.reconnected")

    # nats-py sleeps for these, so fractions work although its signature says int
    intervals: dict[str, Any] = {"reconnect_time_wait": 0.5, "ping_interval": ping_interval}
    nc = ClusterClient()
    nc.failover_seconds = failover_seconds
    await nc.connect(
        servers=[u.strip() for u in url.split(",") if u.strip()],
        name=name,
        max_reconnect_attempts=-1,
        connect_timeout=3,
        max_outstanding_pings=2,
        allow_reconnect=True,
        **intervals,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        **(auth or {}),
    )
    client.append(nc)
    return nc


def nats_auth(settings: CommonSettings) -> dict[str, Any]:
    """nats-py's options for the configured user, password and TLS files (none: {})."""
    options: dict[str, Any] = {}
    if settings.nats_user or settings.nats_password:
        options["user"] = settings.nats_user
        options["password"] = settings.nats_password
    if settings.nats_tls_ca_file or settings.nats_tls_cert_file:
        context = ssl.create_default_context(cafile=settings.nats_tls_ca_file or None)
        if settings.nats_tls_cert_file:
            context.load_cert_chain(settings.nats_tls_cert_file, settings.nats_tls_key_file or None)
        options["tls"] = context
    return options


async def connect_with(settings: CommonSettings, name: str) -> NATS:
    """`connect` with the NATS settings every process shares (URL, ping interval, failover)."""
    return await connect(
        settings.nats_url,
        name,
        ping_interval=settings.nats_ping_interval,
        failover_seconds=settings.nats_failover_seconds,
        auth=nats_auth(settings),
    )
