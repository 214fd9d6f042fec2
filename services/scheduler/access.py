"""Before a job gets an output made from another job's request, check that its own source URL
(its own credentials) may read the source: sharing must not hand anyone media their token could
not fetch."""

from __future__ import annotations

import aiohttp
import structlog

log = structlog.get_logger("vidmesh.scheduler")

_REFUSED = frozenset({401, 403, 404, 410})


class AccessCheck:
    """Asks the source for its first byte with the job's own URL."""

    def __init__(self, timeout: float = 5.0) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def refused_status(self, url: str) -> int | None:
        """The HTTP status with which the source refuses `url`, or None (allowed, or unknown)."""
        if not url.lower().startswith(("http://", "https://")):
            return None
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        try:
            async with self._session.get(url, headers={"Range": "bytes=0-0"}) as response:
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Unknown is not refused: a source that is briefly down must not fail shared jobs.
            log.warning("access.unknown", error=str(exc) or type(exc).__name__)
            return None
        return status if status in _REFUSED else None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
