"""Every subject, stream, consumer and bucket name, derived from one namespace.

Nothing else spells a subject: handlers ask a `Names` for it. A command's subject comes from its
tag (`job.cancel` -> `<ns>.cmd.scheduler.job_cancel`), the service that owns it from the union
of commands that service decodes. A namespace lets several deployments (or every test) share
one NATS server without seeing each other.
"""

from __future__ import annotations

import functools
import re
import typing
from dataclasses import dataclass

import msgspec

from shared.messages import commands, webhooks

_NAMESPACE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")

DEFAULT_POOL = "default"

# The commands each service consumes: its union decides where a command goes.
COMMAND_OWNERS: dict[str, object] = {
    "scheduler": commands.SchedulerCommand,
    "storage": commands.StorageCommand,
    "notifier": webhooks.NotifierCommand,
}


@functools.cache
def _route(cls: type) -> tuple[str, str]:
    """(owning service, last subject token) of a command type."""
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType) and info.tag is not None, cls
    for service, union in COMMAND_OWNERS.items():
        if cls in (typing.get_args(union) or (union,)):
            return service, str(info.tag).replace(".", "_")
    raise LookupError(f"no service consumes {cls.__name__}: add it to a command union")


@dataclass(frozen=True, slots=True)
class Names:
    """Names for one namespace (`vidmesh` unless configured otherwise)."""

    namespace: str = "vidmesh"

    def __post_init__(self) -> None:
        if not _NAMESPACE.match(self.namespace):
            raise ValueError(
                f"namespace {self.namespace!r} must be 1-32 of a-z, 0-9, '_' or '-', "
                "starting with a letter"
            )

    # ---- streams -------------------------------------------------------------------------
    @property
    def _upper(self) -> str:
        return self.namespace.upper().replace("-", "_")

    @property
    def commands_stream(self) -> str:
        return f"{self._upper}_CMD"

    @property
    def work_stream(self) -> str:
        return f"{self._upper}_WORK"

    @property
    def telemetry_stream(self) -> str:
        """Telemetry samples, kept `retention_hours` (the statistics service sets max_age)."""
        return f"{self._upper}_TELEMETRY"

    @property
    def events_stream(self) -> str:
        return f"{self._upper}_EVENTS"

    @property
    def webhooks_stream(self) -> str:
        return f"{self._upper}_WEBHOOKS"

    # ---- subjects ------------------------------------------------------------------------
    @property
    def commands_all(self) -> str:
        return f"{self.namespace}.cmd.>"

    @property
    def scheduler_commands(self) -> str:
        """Filter of the commands the scheduler consumes."""
        return f"{self.namespace}.cmd.scheduler.>"

    def scheduler_command(self, kind: str) -> str:
        return f"{self.namespace}.cmd.scheduler.{kind}"

    def command_subject(self, command: commands.Command) -> str:
        """The subject of a command: the service that consumes it, then its tag
        (`<ns>.cmd.<service>.<tag with dots as underscores>`); a job's submission also names
        its job (`submission_subject`), so it can be found while it waits in the stream."""
        if isinstance(command, commands.SubmitJob):
            return self.submission_subject(command.job_id)
        service, kind = _route(type(command))
        return f"{self.namespace}.cmd.{service}.{kind}"

    def submission_subject(self, job_id: str) -> str:
        """The subject of job `job_id`'s `SubmitJob` command
        (`<ns>.cmd.scheduler.job_submit.<job id>`): one per job, so the gateway and the
        scheduler read a submission not handled yet from the commands stream by its job id."""
        service, kind = _route(commands.SubmitJob)
        return f"{self.namespace}.cmd.{service}.{kind}.{job_id}"

    def commands_of(self, service: str) -> str:
        """Filter of the commands one service consumes."""
        return f"{self.namespace}.cmd.{service}.>"

    @property
    def notifier_commands(self) -> str:
        """Filter of the commands the notifier consumes (test deliveries, retries by hand)."""
        return self.commands_of("notifier")

    @property
    def storage_commands(self) -> str:
        """Filter of the commands the storage service consumes."""
        return f"{self.namespace}.cmd.storage.>"

    @property
    def work_all(self) -> str:
        return f"{self.namespace}.work.>"

    def work(self, pool: str = DEFAULT_POOL) -> str:
        """Work items for one transcoder pool."""
        return f"{self.namespace}.work.{pool}"

    @property
    def events_all(self) -> str:
        return f"{self.namespace}.evt.>"

    @property
    def webhooks_all(self) -> str:
        return f"{self.namespace}.webhook.>"

    @property
    def webhook_deliver(self) -> str:
        """Delivery attempts the notifier owes (work queue; retries wait as delayed naks)."""
        return f"{self.namespace}.webhook.deliver"

    def job_event(self, job_id: str, kind: str) -> str:
        """`<ns>.evt.job.<job_id>.<kind>`, e.g. `vidmesh.evt.job.<id>.completed`."""
        return f"{self.namespace}.evt.job.{job_id}.{kind}"

    def rendition_event(self, key: str, kind: str) -> str:
        """`<ns>.evt.rendition.<key>.<kind>`."""
        return f"{self.namespace}.evt.rendition.{key}.{kind}"

    def worker_event(self, worker_id: str, kind: str) -> str:
        return f"{self.namespace}.evt.worker.{worker_id}.{kind}"

    def webhook_event(self, subscription_id: str, kind: str) -> str:
        return f"{self.namespace}.evt.webhook.{subscription_id}.{kind}"

    def pool_event(self, pool_id: str, kind: str) -> str:
        return f"{self.namespace}.evt.pool.{pool_id}.{kind}"

    def probe_event(self, probe_id: str, kind: str) -> str:
        """`<ns>.evt.probe.<probe_id>.<kind>`."""
        return f"{self.namespace}.evt.probe.{probe_id}.{kind}"

    def cleanup_event(self, cleanup_id: str, kind: str) -> str:
        """`<ns>.evt.cleanup.<cleanup_id>.<kind>`."""
        return f"{self.namespace}.evt.cleanup.{cleanup_id}.{kind}"

    def storage_event(self, kind: str) -> str:
        """`<ns>.evt.storage.<kind>`."""
        return f"{self.namespace}.evt.storage.{kind}"

    @property
    def telemetry_all(self) -> str:
        return f"{self.namespace}.telemetry.>"

    def telemetry(self, level: str) -> str:
        """`<ns>.telemetry.<level>`: `raw` samples, or `1m` / `1h` averages."""
        return f"{self.namespace}.telemetry.{level}"

    # ---- consumers -----------------------------------------------------------------------
    @property
    def scheduler_consumer(self) -> str:
        return "scheduler"

    @property
    def storage_consumer(self) -> str:
        return "storage"

    @property
    def storage_events_consumer(self) -> str:
        return "storage-events"

    @property
    def statistics_consumer(self) -> str:
        return "statistics"

    @property
    def task_history_consumer(self) -> str:
        """The consumer that fed the task history before the statistics service's consumer took
        its events in too (deleted on start, see `shared.nats.in_order`)."""
        return "task-history"

    @property
    def notifier_consumer(self) -> str:
        """The notifier's consumer of the events stream (fans events out to subscriptions)."""
        return "notifier"

    @property
    def notifier_commands_consumer(self) -> str:
        """The notifier's consumer of its commands."""
        return "notifier-commands"

    @property
    def webhook_delivery_consumer(self) -> str:
        """The notifier's consumer of delivery attempts."""
        return "notifier-deliveries"

    def transcode_consumer(self, pool: str = DEFAULT_POOL) -> str:
        return f"transcode-{pool}"

    # ---- KV buckets ----------------------------------------------------------------------
    def bucket(self, name: str) -> str:
        return f"{self.namespace}-{name}"

    @property
    def jobs_bucket(self) -> str:
        return self.bucket("jobs")

    @property
    def renditions_bucket(self) -> str:
        return self.bucket("renditions")

    @property
    def progress_bucket(self) -> str:
        return self.bucket("progress")

    @property
    def leases_bucket(self) -> str:
        return self.bucket("leases")

    @property
    def parts_bucket(self) -> str:
        """The parts of split renditions (video segments, audio, join), one key each."""
        return self.bucket("parts")

    @property
    def stats_bucket(self) -> str:
        return self.bucket("stats")

    @property
    def workers_bucket(self) -> str:
        return self.bucket("workers")

    @property
    def storage_bucket(self) -> str:
        return self.bucket("storage")

    @property
    def users_bucket(self) -> str:
        return self.bucket("users")

    @property
    def usernames_bucket(self) -> str:
        return self.bucket("usernames")

    @property
    def apikeys_bucket(self) -> str:
        return self.bucket("apikeys")

    @property
    def presets_bucket(self) -> str:
        return self.bucket("presets")

    @property
    def batches_bucket(self) -> str:
        return self.bucket("batches")

    @property
    def userstores_bucket(self) -> str:
        return self.bucket("userstores")

    @property
    def pools_bucket(self) -> str:
        return self.bucket("pools")

    @property
    def settings_bucket(self) -> str:
        return self.bucket("settings")

    @property
    def sessions_bucket(self) -> str:
        return self.bucket("sessions")

    @property
    def capabilities_bucket(self) -> str:
        return self.bucket("capabilities")

    @property
    def webhooks_bucket(self) -> str:
        return self.bucket("webhooks")

    @property
    def deliveries_bucket(self) -> str:
        return self.bucket("deliveries")

    @property
    def outputnames_bucket(self) -> str:
        """Object names in users' storage, each given to one rendition (create-only)."""
        return self.bucket("outputnames")

    @property
    def tasks_bucket(self) -> str:
        """The task history (the statistics service's projection; see shared.messages.tasks)."""
        return self.bucket("tasks")

    @property
    def openencoder_bucket(self) -> str:
        """The OpenEncoder face's counters of integer ids and their index (job and preset)."""
        return self.bucket("openencoder")

    @property
    def serversettings_bucket(self) -> str:
        """The server settings groups (general, paths, processing, kill switches): one record."""
        return self.bucket("serversettings")

    @property
    def logins_bucket(self) -> str:
        """Failed sign-ins per username and client address (the gateway's, with a TTL)."""
        return self.bucket("logins")

    @property
    def revoked_bucket(self) -> str:
        """Ids of tokens signed out before their expiry (the gateway's, with a TTL)."""
        return self.bucket("revoked")

    # ---- request/reply -------------------------------------------------------------------
    @property
    def probe_rpc(self) -> str:
        """Transcoders answer probe requests here (queue group `transcoders`)."""
        return f"{self.namespace}.rpc.probe"

    def capabilities_rpc(self, pool: str) -> str:
        """Every transcoder of `pool` re-runs its capability probe and answers (no queue group)."""
        return f"{self.namespace}.rpc.capabilities.{pool}"

    def session_cancel(self, session_id: str) -> str:
        """The transcoder running a session stops it (core NATS, no reply needed)."""
        return f"{self.namespace}.rpc.session-cancel.{session_id}"

    @property
    def submitted_notice(self) -> str:
        """A gateway tells the others of each job it accepted, the moment it is accepted (core
        NATS: each shows the job until the scheduler's record comes; a lost notice only means
        waiting for the record)."""
        return f"{self.namespace}.rpc.job-submitted"

    def statistics_rpc(self, kind: str) -> str:
        """The statistics service answers here (queue group `statistics`): `pools`, `estimate`."""
        return f"{self.namespace}.rpc.statistics.{kind}"

    def all_buckets(self) -> list[str]:
        return [
            self.jobs_bucket,
            self.renditions_bucket,
            self.progress_bucket,
            self.leases_bucket,
            self.parts_bucket,
            self.stats_bucket,
            self.workers_bucket,
            self.storage_bucket,
            self.users_bucket,
            self.usernames_bucket,
            self.apikeys_bucket,
            self.presets_bucket,
            self.batches_bucket,
            self.userstores_bucket,
            self.pools_bucket,
            self.settings_bucket,
            self.sessions_bucket,
            self.capabilities_bucket,
            self.webhooks_bucket,
            self.deliveries_bucket,
            self.outputnames_bucket,
            self.tasks_bucket,
            self.openencoder_bucket,
            self.serversettings_bucket,
            self.logins_bucket,
            self.revoked_bucket,
        ]

    def all_streams(self) -> list[str]:
        """Every JetStream stream of this namespace: the five streams and each bucket's."""
        streams = [
            self.commands_stream,
            self.work_stream,
            self.events_stream,
            self.telemetry_stream,
            self.webhooks_stream,
        ]
        return streams + [f"KV_{bucket}" for bucket in self.all_buckets()]
