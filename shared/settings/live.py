"""The server settings as a running service sees them: a watch on the settings record keeps a
copy in memory, so each read is the value in force now and a change applies without a restart.
Each reader falls back to its own environment's value where a field is unset."""

from __future__ import annotations

from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from shared.nats.consumer import RetryPolicy
from shared.nats.kv import TypedKV
from shared.nats.projection import Projection
from shared.settings.groups import DEFAULTS, SETTINGS_KEY, Killswitch, ServerSettings


class LiveSettings:
    """The server settings record, kept current by a KV watch; `start()` before reading."""

    def __init__(self, bucket: KeyValue, name: str, *, nc: NATS | None = None) -> None:
        self.store = TypedKV(bucket, ServerSettings)
        self._projection = Projection(self.store, name, nc=nc)

    async def start(self) -> None:
        await self._projection.start()

    async def stop(self) -> None:
        await self._projection.stop()

    @property
    def current(self) -> ServerSettings:
        """The settings in force now (the defaults until an administrator changes one)."""
        return self._projection.get(SETTINGS_KEY) or DEFAULTS

    async def change(
        self, fn: Callable[[ServerSettings], ServerSettings]
    ) -> tuple[ServerSettings, ServerSettings]:
        """Apply `fn` to the stored record by compare-and-set (it may raise to refuse); this
        copy sees the result at once. Returns the record before and after."""
        done = await self.store.replace(SETTINGS_KEY, lambda found: fn(found or DEFAULTS))
        before = done.before.value if done.before is not None else DEFAULTS
        if done.record is not None and done.revision is not None:
            self._projection.apply(SETTINGS_KEY, done.record, done.revision)
        return before, done.record or DEFAULTS

    def listen(self, fn: Callable[[ServerSettings], None]) -> None:
        """Call `fn(settings)` after every change of the record."""
        self._projection.listen(lambda _key, _old, new: fn(new or DEFAULTS))

    def switch(self, name: str) -> Killswitch:
        """The kill switch `name` (`native`, `streamyfin`, `openencoder`, `webhooks`,
        `registration`)."""
        switch: Killswitch = getattr(self.current.killswitches, name)
        return switch

    def media_roots(self, configured: list[str]) -> list[str]:
        """The folders local sources may come from: the paths group's, else `configured`."""
        roots = self.current.paths.media_roots
        return configured if roots is None else list(roots)

    def scratch_dir(self, configured: str) -> str:
        """The transcoders' scratch folder: the paths group's, else `configured`."""
        return self.current.paths.scratch_dir or configured

    def retry_policy(self) -> RetryPolicy:
        """The processing group's retry policy, for the consumer kit (unset: the consumer's)."""
        processing = self.current.processing
        return RetryPolicy(
            attempts=processing.retry_attempts,
            backoff_seconds=processing.retry_backoff_seconds,
            ack_wait=processing.ack_wait_seconds,
        )
