"""No lost job events: a job change stored by a writer that died before publishing its event
gets that event from the scheduler's sweep, and a change whose event was published is left
alone. Against a real nats-server and the services started in process."""

from __future__ import annotations

import msgspec
from nats.js.errors import NotFoundError

from shared.messages import events
from shared.messages.records import JobRecord
from shared.nats.kv import TypedKV
from tests.conftest import ALICE
from tests.harness import Api, System, eventually
from tests.jellyfin_standin import JellyfinStandIn


async def test_a_change_stored_without_its_event_gets_it_and_others_are_left_alone(
    system: System, ann: Api, jellyfin: JellyfinStandIn
) -> None:
    # Given a job waiting paused in a batch (nothing changes it by itself)
    body = {"jobs": [{"source": jellyfin.stream_url("fits", ALICE)}], "paused": True}
    (item,) = (await ann.ok("POST", "/api/jobs/bulk", 201, json=body))["results"]
    job_id = item["job"]["id"]
    js = system.nc.jetstream()
    subject = system.names.job_event(job_id, "accepted")

    async def announced() -> int | None:
        """The revision of the job's last accepted event, None while there is none."""
        try:
            last = await js.get_last_msg(system.names.events_stream, subject)
        except NotFoundError:
            return None
        found = events.DECODER.decode(last.data or b"")
        assert isinstance(found, events.JobEvent)
        return found.revision

    await eventually(announced, what="the job's accepted event")
    jobs = TypedKV(await js.key_value(system.names.jobs_bucket), JobRecord)
    stored = await jobs.get(job_id)
    assert stored is not None and await announced() == stored.revision

    # When a writer stores a change of it and dies before publishing the event
    changed = msgspec.structs.replace(stored.value, priority=stored.value.priority + 1)
    revision = await jobs.update(job_id, changed, stored.revision)

    # Then the scheduler publishes that revision's event once the change has settled
    async def repaired() -> bool:
        return await announced() == revision

    await eventually(repaired, timeout=20, what="the lost event published again")
    published = (await js.stream_info(system.names.events_stream)).state.messages
    # ... and once is enough: later sweeps publish nothing more for it
    await eventually(
        lambda: system.scheduler.loop.passes > 20, what="later passes of the scheduler"
    )
    assert (await js.stream_info(system.names.events_stream)).state.messages == published
