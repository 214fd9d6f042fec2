"""Signed-out tokens: the ids (`jti`) of tokens ended before their expiry. They are kept in the
`<ns>-revoked` KV bucket as long as the longest-lived token may live, and in memory on every
gateway replica from a watch of it, so refusing one costs a lookup, never a KV read.

A revocation held in memory is forgotten once its token has expired (the token is refused for
that anyway); the bucket forgets it with its TTL.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable

from shared.messages.accounts import RevokedToken
from shared.nats.projection import Projection


class Revocations:
    """The tokens signed out on any replica; `Projection.start()` the watch before asking."""

    def __init__(self, revoked: Projection[RevokedToken]) -> None:
        self.revoked = revoked
        # (expires_at, jti) of the revocations held, soonest first, to forget them in order
        self._expiring: list[tuple[float, str]] = []
        revoked.listen(self._seen)

    def listen(self, fn: Callable[[str], None]) -> None:
        """Call `fn(user_id)` whenever a token of that account is revoked (on any replica)."""
        self.revoked.listen(lambda jti, old, new: fn(new.user_id) if new is not None else None)

    async def revoke(self, token_id: str, user_id: str, expires_at: float) -> None:
        """Refuse the token from now on, here at once and on the other replicas as their
        watch brings it."""
        record = RevokedToken(user_id=user_id, expires_at=expires_at)
        revision = await self.revoked.store.put(token_id, record)
        self.revoked.apply(token_id, record, revision)

    def is_revoked(self, token_id: object) -> bool:
        self._forget_expired(time.time())
        return isinstance(token_id, str) and self.revoked.get(token_id) is not None

    def _seen(self, token_id: str, old: RevokedToken | None, new: RevokedToken | None) -> None:
        if new is not None:
            heapq.heappush(self._expiring, (new.expires_at, token_id))

    def _forget_expired(self, now: float) -> None:
        expiring = self._expiring
        while expiring and expiring[0][0] < now:
            _, token_id = heapq.heappop(expiring)
            held = self.revoked.versioned(token_id)
            if held is not None and held.value.expires_at < now:
                # a local forgetting: the entry stays in the bucket until its TTL
                self.revoked.apply(token_id, None, held.revision + 1)
