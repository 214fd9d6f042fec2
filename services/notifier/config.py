"""Notifier settings."""

from __future__ import annotations

from typing import Annotated

import msgspec

from shared.config import CommonSettings
from shared.outbound import OutboundPolicy

DAY = 86_400.0
# The least attempt cap of the delivery consumer: a work message is handed on one delivery before
# the cap, and the message taking over waits its first delivery out, so the cap needs room for two.
MIN_DELIVERY_ATTEMPTS = 3
# 11 attempts over a little more than 27 hours (at least 24.9 with the jitter).
DEFAULT_SCHEDULE = "5,30,120,600,1800,3600,7200,14400,28800,43200"


class NotifierSettings(CommonSettings, kw_only=True, forbid_unknown_fields=True):
    """How the notifier delivers webhooks."""

    # The Jellyfin server (JELLYFIN_URL): outbound requests to it are always allowed.
    jellyfin_url: str = ""
    # Seconds to wait before each retry of a failing delivery, separated by commas; a delivery
    # whose every retry failed fails for good.
    webhook_retry_schedule: str = DEFAULT_SCHEDULE
    # Each wait is spread by up to this fraction either way, so retries do not come in waves.
    webhook_retry_jitter: Annotated[float, msgspec.Meta(ge=0, le=0.5)] = 0.1
    # A subscription whose deliveries failed for good this many times in a row is disabled.
    webhook_disable_after: Annotated[int, msgspec.Meta(ge=1)] = 20
    # Seconds one attempt may take (connect, redirects and answer together).
    webhook_timeout: Annotated[float, msgspec.Meta(gt=0, le=120)] = 10.0
    # Attempts made at once, across every endpoint.
    webhook_concurrency: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 32
    # Attempts made at once to one endpoint (scheme, host and port): a slow endpoint holds only
    # this many of the slots above.
    webhook_endpoint_concurrency: Annotated[int, msgspec.Meta(ge=1, le=256)] = 4
    # Deliveries owed at once (waiting retries included) before new ones wait their turn.
    webhook_max_pending: Annotated[int, msgspec.Meta(ge=100)] = 100_000

    def __post_init__(self) -> None:
        super().__post_init__()
        delays = self.retry_delays
        longest = sum(delays) * (1 + self.webhook_retry_jitter)
        if longest >= self.delivery_retention_days * DAY:
            raise ValueError(
                "webhook_retry_schedule lasts longer than delivery_retention_days; "
                "shorten the schedule or keep deliveries longer"
            )

    @property
    def retry_delays(self) -> list[float]:
        """The retry schedule in seconds (raises ValueError when it is not one)."""
        try:
            delays = [
                float(part) for part in self.webhook_retry_schedule.split(",") if part.strip()
            ]
        except ValueError:
            raise ValueError(
                "webhook_retry_schedule must be seconds separated by commas, e.g. 5,30,120"
            ) from None
        if not delays or any(delay <= 0 for delay in delays):
            raise ValueError("webhook_retry_schedule needs at least one positive number of seconds")
        return delays

    @property
    def delivery_attempts(self) -> int:
        """The delivery consumer's attempt cap: deliveries of one work message whose handling
        keeps failing (or never returns) before it is terminated. `message_attempts`, at least
        `MIN_DELIVERY_ATTEMPTS`. It never cuts a delivery's retry schedule short: a work message
        that waits (a retry, a busy endpoint) is handed on to a fresh one before it reaches the
        cap (`services.notifier.deliver`)."""
        return max(MIN_DELIVERY_ATTEMPTS, self.message_attempts)

    @property
    def policy(self) -> OutboundPolicy:
        return OutboundPolicy.parse(self.outbound_allow, trust=[self.jellyfin_url])
