"""A job as accepted: the record a new job starts as, from what its submission asks for.

The state machine (`shared.jobs.state`, which re-exports these) moves it from there.
"""

from __future__ import annotations

from typing import Any

from shared.media.presets import PresetSpec
from shared.media.profiles import get_container
from shared.messages.commands import SubmitJob
from shared.messages.records import Destination, JobRecord, JobStatus


def new_job(
    *,
    job_id: str,
    owner: str,
    source: str,
    now: float,
    owner_name: str = "",
    client: str = "streamyfin",
    device_id: str = "",
    item_id: str = "",
    item: dict[str, Any] | None = None,
    profile: str = "optimized",
    spec: PresetSpec | None = None,
    container: str = "mp4",
    duration_hint: float | None = None,
    priority: int = 0,
    output_name: str = "",
    batch: str = "",
    paused: bool = False,
    destination: Destination | None = None,
    pool: str = "",
    notify_url: str = "",
    request_sha256: str = "",
    openencoder_id: int | None = None,
) -> JobRecord:
    """A job as accepted: queued (or paused, in a batch), not yet attached to a rendition."""
    return JobRecord(
        id=job_id,
        owner=owner,
        owner_name=owner_name,
        client=client,
        device_id=device_id,
        item_id=item_id,
        item=item,
        source=source,
        profile=profile,
        spec=spec,
        container=container,
        priority=priority,
        output_name=output_name,
        batch=batch,
        destination=destination,
        pool=pool,
        notify_url=notify_url,
        request_sha256=request_sha256,
        openencoder_id=openencoder_id,
        status=JobStatus.PAUSED if paused else JobStatus.QUEUED,
        created_at=now,
        updated_at=now,
        duration_hint=duration_hint,
    )


def submitted_job(command: SubmitJob, spec: PresetSpec | None = None) -> JobRecord:
    """The job a `SubmitJob` command asks for, as accepted (with `spec`, the command's spec
    within the fleet's ceilings; without, as the face resolved it)."""
    spec = spec or command.spec
    return new_job(
        job_id=command.job_id,
        owner=command.owner,
        owner_name=command.owner_name,
        client=command.client,
        device_id=command.device_id,
        item_id=command.item_id,
        item=command.item,
        source=command.source,
        profile=command.profile,
        spec=spec,
        container=get_container(spec.container).name,
        duration_hint=command.duration_hint,
        priority=command.priority,
        output_name=command.output_name,
        batch=command.batch,
        paused=command.paused,
        destination=command.destination,
        pool=command.pool,
        notify_url=command.notify_url,
        request_sha256=command.request_sha256,
        openencoder_id=command.openencoder_id,
        now=command.at,
    )
