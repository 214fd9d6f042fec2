"""Before a job gets an output made from another job's request, check that its own source URL
(its own credentials) may read the source: sharing must not hand anyone media their token could
not fetch. It fails closed: only a 2xx answer to the job's own request allows sharing."""

from __future__ import annotations

import enum

import aiohttp
import msgspec
import structlog

from shared.errors import BadRequest
from shared.outbound import OutboundClient, OutboundPolicy

log = structlog.get_logger("vidmesh.scheduler")


class Verdict(enum.Enum):
    ALLOWED = "allowed"  # the source answered the job's own request with 2xx
    # Anything else (a refusal, timeout, redirect, 5xx...): the job gets its own output, made from
    # its own URL, so it fails (or not) for what the source says to that URL, never for this.
    UNKNOWN = "unknown"


class AccessAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """What the source said to a job's own one-byte request."""

    verdict: Verdict
    status: int | None = None  # the HTTP status, when one came back
    why: str = ""  # for the log: the status or the error's kind


class AccessCheck:
    """Asks the source for its first byte with the job's own URL, within `timeout` seconds.

    Redirects are not followed: a 3xx (often a login page) is no proof the job may read the media.
    The request keeps to the outbound policy (every resolved address checked before connecting):
    a source the policy refuses is no proof either, and the job's own transcode is refused too.
    """

    def __init__(self, policy: OutboundPolicy, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self._client = OutboundClient(policy)

    async def answer(self, url: str) -> AccessAnswer:
        """Whether `url`'s own credentials may read the media (never raises but on cancel)."""
        if not url.lower().startswith(("http://", "https://")):
            # Object and local sources are keyed by owner or path: sharing them needs no check.
            return AccessAnswer(verdict=Verdict.ALLOWED, why="not http")
        try:
            exchange = await self._client.request(
                "GET",
                url,
                headers={"Range": "bytes=0-0"},
                timeout=self.timeout,
                max_redirects=0,  # a redirect is an error here, never followed
                read_limit=1,
            )
        except (aiohttp.ClientError, TimeoutError, ValueError, BadRequest) as exc:
            return AccessAnswer(verdict=Verdict.UNKNOWN, why=type(exc).__name__)
        status = exchange.status
        if 200 <= status < 300:
            return AccessAnswer(verdict=Verdict.ALLOWED, status=status, why=str(status))
        return AccessAnswer(verdict=Verdict.UNKNOWN, status=status, why=str(status))

    async def close(self) -> None:
        await self._client.close()
