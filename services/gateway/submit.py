"""What every face does to submit a job: the checks that need the caller (the source it may read,
its own storages, the pool, the download name), and handing the job to the scheduler.

A face does not store a job: it publishes a `SubmitJob` command, de-duplicated by the job's id.
Once JetStream has stored the command (its PubAck), the job is accepted durably: the scheduler's
intake stores the record from it, retrying until it can, and may cap its spec by the fleet's
ceilings. Until the record is stored, every gateway shows the job as its submission asks for it (a
provisional record, replaced by the stored one as the KV watch brings it; the gateway that took
it tells the others at once), so the caller's next read finds it, on whichever replica, without
anyone waiting on the scheduler. With an Idempotency-Key the job id is
derived from (owner, key), so a repeated request names the same job: the commands stream drops
the repeated command and the create-only write keeps the first job.
"""

from __future__ import annotations

import contextlib
import functools
import re
import uuid

import msgspec
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from services.gateway.identity import Principal
from services.gateway.state import NATS_UNREACHABLE, Gateway
from shared.blobs.users import SOURCE_SCHEMES, UserStore, record_key, user_ref
from shared.errors import BadRequest, Unavailable
from shared.fleet import capped
from shared.jobs import state as jobstate
from shared.media import is_http
from shared.messages import commands as cmd
from shared.messages.fleet import DEFAULT_POOL
from shared.messages.records import Destination, JobRecord
from shared.nats.topology import publish_command
from shared.outbound import OutboundPolicy, OutboundRefused, check_url_resolved, policy_for
from shared.settings import face_of, refuse_if_engaged
from shared.sources import check_local_source, is_object_uri, validate_http_url

# The revision of a job shown as its stored submission asks for it: any stored record replaces it.
PROVISIONAL = 0
_FILENAME = re.compile(r"^[^/\\\x00-\x1f]{1,200}$")
# Job ids derived from an Idempotency-Key live in their own UUID namespace.
_IDEMPOTENT_IDS = uuid.UUID("4f1c6a52-8f0e-4f7e-9a55-0b3c2d8e1a77")


def new_job_id() -> str:
    return str(uuid.uuid4())


def idempotent_job_id(owner: str, key: str) -> str:
    """The id of the job an owner's Idempotency-Key names (the same for every repeat)."""
    return str(uuid.uuid5(_IDEMPOTENT_IDS, f"{owner}\n{key}"))


async def check_pool(gw: Gateway, pool: str | None) -> str:
    """ "" for the default pool; else a pool that exists (it may be disabled: the job waits)."""
    if pool is None or pool == DEFAULT_POOL:
        return ""
    if await gw.fleet.pools.get(pool) is None:
        known = ", ".join(p.id for p in await gw.fleet.all_pools())
        raise BadRequest(f"There is no pool {pool!r}; pools: {known}.", details={"field": "pool"})
    return pool


async def check_source(gw: Gateway, who: Principal, source: str) -> str:
    """A source this server may read: http(s), an object in one of the caller's storages, or a
    file under a configured media root."""
    if is_object_uri(source):
        scheme, _, rest = source.partition("://")
        bucket, _, key = rest.partition("/")
        if not bucket or not key:
            raise BadRequest(f"`source` must look like {scheme}://bucket/key.")
        slot = SOURCE_SCHEMES[scheme]
        await _configured(gw, who, slot, for_what=f"read {scheme}:// sources")
        return source
    if "://" in source and not source.startswith(("http://", "https://", "file://")):
        scheme = source.split("://", 1)[0]
        raise BadRequest(
            f"{scheme}:// sources are not supported: use an http(s) URL, an s3://, oss://, "
            "gs:// or az:// object, or a path under a media root."
        )
    if is_http(source) or source.startswith(("http://", "https://")):
        url = validate_http_url(source)
        await check_public_source(gw, url)
        return url
    return check_local_source(source, gw.server.media_roots(gw.settings.media_root_list))


async def check_public_source(gw: Gateway, url: str) -> None:
    """The outbound policy for http(s) sources: no loopback, private, link-local or metadata
    address (as written, or as the name resolves here), unless the operator allowed the network;
    the configured Jellyfin server is always allowed. A name that does not resolve here is left
    to the transcoder, which reports an unreachable source."""
    policy = _policy(gw.settings.outbound_allow, gw.settings.jellyfin_url)
    try:
        await check_url_resolved(url, policy, what="`source`")
    except OutboundRefused:
        raise
    except BadRequest:
        return  # cannot be resolved from here


@functools.lru_cache(maxsize=8)
def _policy(allow: str, jellyfin_url: str) -> OutboundPolicy:
    return policy_for(allow, jellyfin_url) if jellyfin_url else policy_for(allow)


async def _configured(gw: Gateway, who: Principal, slot: str, *, for_what: str) -> UserStore:
    found = await gw.userstores.get(record_key(who.user_id, slot))
    if found is None:
        raise BadRequest(f"Configure your {slot} storage (POST /api/user/{slot}) to {for_what}.")
    return found.value


async def destination_of(
    gw: Gateway, who: Principal, *, store: str | None, prefix: str, dest: str | None
) -> Destination | None:
    """The caller's own storage a job's output goes to, if any: a storage slot and a prefix
    (`store`, `prefix`), or OpenEncoder's `dest` (s3:///prefix/, the caller's bucket)."""
    if dest:
        scheme, _, rest = dest.partition("://")
        if scheme not in ("s3", "oss", "gs", "az"):
            raise BadRequest("`dest` must look like s3:///prefix/ (your configured bucket).")
        bucket, _, dest_prefix = rest.partition("/")
        slot = SOURCE_SCHEMES[scheme]
        record = await _configured(gw, who, slot, for_what="write to it")
        if bucket and bucket != record.bucket:
            raise BadRequest(f"`dest` names bucket {bucket!r}; yours is {record.bucket!r}.")
        return Destination(store=user_ref(who.user_id, slot), prefix=dest_prefix.strip("/"))
    if store is None:
        return None
    await _configured(gw, who, store, for_what="write to it")
    if "\x00" in prefix or ".." in prefix.split("/"):
        raise BadRequest("`destination.prefix` must not contain '..'.")
    return Destination(store=user_ref(who.user_id, store), prefix=prefix.strip("/"))


def check_filename(name: str) -> str:
    """A download name: a file name, without folders."""
    if not _FILENAME.match(name) or name in (".", ".."):
        raise BadRequest("`destination.filename` must be a file name, without folders.")
    return name


def refuse_new_work(gw: Gateway, client: str) -> None:
    """A 503 with the operator's reason while the kill switch of the face `client` names is
    engaged: no new job, and no job queued again (a retry, a restart, a batch's start)."""
    refuse_if_engaged(gw.server.switch(face_of(client)), "Accepting new jobs")


async def publish_submission(gw: Gateway, command: cmd.SubmitJob) -> bool:
    """Hand a job to the scheduler; False when the commands stream already had a submission
    of this job (the same Idempotency-Key, sent again). A 503 with the operator's reason
    while the kill switch of the face the job came from is engaged."""
    refuse_new_work(gw, command.client)
    data = cmd.ENCODER.encode(command)  # for the commands stream and the other gateways
    try:
        first = await publish_command(
            gw.js, gw.names, command, msg_id=f"submit:{command.job_id}", data=data
        )
    except Exception as exc:
        raise Unavailable(NATS_UNREACHABLE) from exc
    if first:
        show_submitted(gw, command)
        with contextlib.suppress(Exception):  # the others wait for the record instead
            await gw.nc.publish(gw.names.submitted_notice, data)
    return first


def show_submitted(gw: Gateway, command: cmd.SubmitJob) -> None:
    """Show a job accepted a moment ago as its submission asks for it, within the fleet's
    quality ceilings as the scheduler will store it, until the stored record replaces it."""
    spec = capped(command.spec, gw.transcoding())
    gw.jobs.apply(command.job_id, jobstate.submitted_job(command, spec), PROVISIONAL)


async def follow_submissions(gw: Gateway) -> Subscription:
    """Show the jobs the other gateways accept too, the moment they are accepted (each gateway
    tells the others: `Names.submitted_notice`)."""

    async def shown(msg: Msg) -> None:
        try:
            command = cmd.SCHEDULER_DECODER.decode(msg.data)
        except msgspec.DecodeError:
            return
        if isinstance(command, cmd.SubmitJob) and gw.jobs.versioned(command.job_id) is None:
            show_submitted(gw, command)  # not this gateway's own, nor stored already

    return await gw.nc.subscribe(gw.names.submitted_notice, cb=shown)


async def accepted(gw: Gateway, job_id: str, *, timeout: float | None = None) -> JobRecord:
    """The submitted job: as this replica shows it once its submission is published (stored, or
    provisional); else, for a submission seen before (a repeated Idempotency-Key), once the
    scheduler has stored it or, after a bounded wait (`timeout`, the command timeout unless
    given: the scheduler is busy or down), as its submission, still in the commands stream,
    asks for it."""
    wait = gw.settings.command_timeout if timeout is None else timeout
    if wait > 0:
        await gw.jobs.wait_for(job_id, lambda job: job is not None, wait)
    job = await gw.job(job_id)
    if job is None:
        raise Unavailable(NATS_UNREACHABLE)
    return job


async def stored(gw: Gateway, job_id: str, timeout: float) -> bool:
    """Wait (at most `timeout`) until the scheduler has stored the job, not only accepted it;
    whether it has."""

    def is_stored(_job: JobRecord | None) -> bool:
        found = gw.jobs.versioned(job_id)
        return found is not None and found.revision > PROVISIONAL

    return timeout > 0 and await gw.jobs.wait_for(job_id, is_stored, timeout)


async def submit(gw: Gateway, command: cmd.SubmitJob) -> JobRecord:
    """Submit a job and wait until it is stored."""
    await publish_submission(gw, command)
    return await accepted(gw, command.job_id)
