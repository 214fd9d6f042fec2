"""The notifier service: reads the events stream and delivers signed webhooks, with retries.

Three durable consumers: one on the events stream turns each event into deliveries
(`fanout.py`); one on the webhook work stream attempts them (`deliver.py`), many at once across
endpoints and a few at once per endpoint; one on its commands sends test deliveries and retries
by hand (`commands.py`). Replicas share all three; everything they need is in NATS.
"""

from __future__ import annotations

import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from services.notifier.attempt import USER_AGENT
from services.notifier.commands import MAX_TEST_SECONDS, NotifierCommands
from services.notifier.config import DAY, NotifierSettings
from services.notifier.deliver import Deliverer
from services.notifier.fanout import Fanout
from shared.messages import events as ev
from shared.messages.webhooks import NOTIFIER_DECODER, WORK_DECODER, WebhookSubscription
from shared.nats.consumer import Consumer
from shared.nats.projection import Projection
from shared.nats.subjects import Names
from shared.nats.topology import ensure_topology, retention_of
from shared.outbound import OutboundClient
from shared.runtime import Service
from shared.settings import LiveSettings
from shared.webhooks.secrets import SecretSealer
from shared.webhooks.store import WebhookStore

log = structlog.get_logger("vidmesh.notifier")

FANOUT_SLOTS = 4
# Events a fan-out slot fetches at once while they wait (most match no subscription).
FANOUT_BATCH = 16
COMMAND_SLOTS = 4


class Notifier(Service):
    name = "notifier"

    def __init__(self, nc: NATS, settings: NotifierSettings) -> None:
        super().__init__(grace=settings.stop_grace_seconds, deadline=settings.stop_deadline_seconds)
        self.nc = nc
        self.settings = settings
        self.names = Names(settings.namespace)
        self.sealer = SecretSealer(settings.storage_key)
        self.client = OutboundClient(settings.policy, user_agent=USER_AGENT)
        self._projection: Projection[WebhookSubscription] | None = None
        self._server: LiveSettings | None = None

    async def start(self) -> None:
        js = self.nc.jetstream()
        retention = retention_of(self.settings)
        buckets = await ensure_topology(
            js, self.names, replicas=self.settings.replicas, retention=retention
        )
        await self._keep_deliveries_for(js, retention.deliveries_ttl)
        store = WebhookStore(js, self.names, buckets.webhooks, buckets.deliveries)
        subscriptions = Projection(store.subscriptions, "notifier.webhooks", nc=self.nc)
        await subscriptions.start()
        self._projection = subscriptions
        if not self.sealer.configured:
            log.warning(
                "notifier.secrets_unsealed",
                message="VIDMESH_STORAGE_KEY is not set: webhook signing secrets are stored "
                "unencrypted in NATS KV.",
            )
        self.fanout = Fanout(store, subscriptions)
        self.deliverer = Deliverer(self.settings, store, subscriptions, self.client, self.sealer)
        server = LiveSettings(buckets.serversettings, "notifier.serversettings", nc=self.nc)
        await server.start()
        self._server = server
        self.deliverer.held = lambda: server.switch("webhooks").engaged
        self.commands = NotifierCommands(self.nc, store, self.client, self.sealer)
        events = Consumer.durable(
            self.names.events_stream,
            self.names.notifier_consumer,
            self.names.events_all,
            ev.DECODER,
            family="event",
            ack_wait=30.0,
            max_ack_pending=FANOUT_SLOTS * FANOUT_BATCH,
            max_attempts=self.settings.message_attempts,
            skip_unknown=True,  # newer producers may add event types
            policy=server.retry_policy,
        )
        fanout = self.fanout.handle
        self.consume(
            await events.open(js, "notifier.events", fanout, slots=FANOUT_SLOTS, batch=FANOUT_BATCH)
        )
        # Waiting retries are naked with a delay and count as pending: max_ack_pending is far
        # above the slots (each slot still fetches one message only when it is free). A
        # delivery's attempts are counted by its record and bounded by the retry schedule; its
        # message is also bounced while its endpoint is busy, so the attempt cap counts only
        # the deliveries of one message, which is handed on to a fresh one before it reaches
        # the cap while it waits (see `deliver.py`): only failing handling reaches it.
        work = Consumer.durable(
            self.names.webhooks_stream,
            self.names.webhook_delivery_consumer,
            self.names.webhook_deliver,
            WORK_DECODER,
            family="delivery",
            # An attempt is bounded by the timeout; a message whose notifier died mid-attempt
            # comes back soon after.
            ack_wait=self.settings.webhook_timeout * 2 + 5.0,
            max_ack_pending=self.settings.webhook_max_pending,
            max_attempts=self.settings.delivery_attempts,
        )
        self.consume(
            await work.open(
                js,
                "notifier.deliveries",
                self.deliverer.handle,
                slots=self.settings.webhook_concurrency,
            )
        )
        commands = Consumer.durable(
            self.names.commands_stream,
            self.names.notifier_commands_consumer,
            self.names.notifier_commands,
            NOTIFIER_DECODER,
            family="command",
            ack_wait=MAX_TEST_SECONDS + 10.0,
            max_ack_pending=COMMAND_SLOTS,
            max_attempts=self.settings.message_attempts,
        )
        self.consume(
            await commands.open(js, "notifier.commands", self.commands.handle, slots=COMMAND_SLOTS)
        )
        log.info(
            "notifier.started",
            subscriptions=len(subscriptions),
            retries=len(self.deliverer.delays),
            sealed=self.sealer.configured,
        )

    async def _keep_deliveries_for(self, js: JetStreamContext, ttl: float) -> None:
        """The configured delivery retention applies to an existing bucket and stream too."""
        for stream in (f"KV_{self.names.deliveries_bucket}", self.names.webhooks_stream):
            info = await js.stream_info(stream)
            if info.config.max_age != ttl:
                await js.update_stream(info.config.evolve(max_age=ttl))
                log.info("notifier.delivery_retention", stream=stream, days=round(ttl / DAY, 2))

    async def stop(self) -> None:
        if self._projection is not None:
            await self._projection.stop()
        if self._server is not None:
            await self._server.stop()
        await self.client.close()
