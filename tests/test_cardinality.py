"""Unique devices are counted in bounded space: exactly while few, within a few percent after,
and an old totals record's list of device ids is folded into the count."""

from __future__ import annotations

import msgspec

from services.statistics.service import fold
from shared import cardinality
from shared.messages import events as ev
from shared.messages.records import JobStatus, Totals


def test_a_handful_of_devices_is_counted_exactly_however_often_they_come_back() -> None:
    count = cardinality.DistinctCount()
    for _ in range(3):
        count = cardinality.add(count, [f"device-{n}" for n in range(7)])
    assert cardinality.estimate(count) == 7
    assert cardinality.estimate(cardinality.add(count, [""])) == 7  # no device id: not a device


def test_many_devices_are_estimated_closely_in_a_record_that_stops_growing() -> None:
    count = cardinality.DistinctCount()
    sizes = []
    for start in range(0, 20_000, 2_000):
        batch = [f"d-{n}".ljust(200, "x") for n in range(start, start + 2000)]
        count = cardinality.add(count, batch)
        sizes.append(len(msgspec.json.encode(count)))
    assert abs(cardinality.estimate(count) - 20_000) < 20_000 * 0.05
    assert max(sizes) < 8 * 1024 and sizes[-1] == sizes[0]


def test_an_old_totals_record_with_a_device_list_is_folded_into_the_count() -> None:
    old = msgspec.json.decode(
        msgspec.json.encode({"last_seq": 3, "jobs_accepted": 3, "devices": ["a", "b", "c"]}),
        type=Totals,
    )
    event = ev.JobAccepted(
        event_id="e",
        time=ev.now(),
        job_id="j",
        owner="u",
        device_id="d",
        revision=1,
        status=JobStatus.QUEUED,
        profile="optimized",
        container="mp4",
    )
    new = fold(old, event, 4)
    assert new.devices == [] and cardinality.estimate(new.unique_devices) == 4
