"""Statistics replicas share the events: while one holds the lead it folds them (a batch at a
time), and when it stops another takes over; every event is counted once either way. Against a
real nats-server, with the statistics service started twice in this process."""

from __future__ import annotations

from shared.messages import events as ev
from shared.messages.records import JobStatus, Totals
from shared.nats.topology import publish_event
from tests.harness import System, build_service, eventually, start_system, stop_system


async def publish_accepted(system: System, numbers: range) -> None:
    js = system.nc.jetstream()
    for n in numbers:
        event = ev.JobAccepted(
            event_id=f"accepted-{n}",
            time=ev.now(),
            job_id=f"job-{n}",
            owner="owner",
            device_id=f"device-{n % 7}",
            revision=1,
            status=JobStatus.QUEUED,
            profile="optimized",
            container="mp4",
        )
        await publish_event(js, system.names, event)


async def test_two_replicas_count_every_event_once_and_one_takes_over_when_the_other_stops(
    env: dict[str, str],
) -> None:
    system = await start_system(env, "statistics")
    second = build_service("statistics", system.nc, system.env)
    await second.start()
    totals = system.services["statistics"].totals

    async def counted(total: int) -> Totals | None:
        found = await totals.get("totals")
        return found.value if found and found.value.jobs_accepted >= total else None

    try:
        # Given two replicas, events come in
        await publish_accepted(system, range(1_500))
        first = await eventually(lambda: counted(1_500), timeout=60, what="1,500 counted")
        assert first.jobs_accepted == 1_500
        # When the one that holds the lead stops, more come
        holder = next(s for s in (system.services["statistics"], second) if s._lead.held)
        other = second if holder is not second else system.services["statistics"]
        await holder.shutdown()
        await publish_accepted(system, range(1_500, 2_000))
        # Then the other takes over, and each is counted once
        after = await eventually(lambda: counted(2_000), timeout=60, what="2,000 counted")
        assert after.jobs_accepted == 2_000 and other._lead.held
    finally:
        await second.shutdown()
        await stop_system(system)
