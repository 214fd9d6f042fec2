"""The parts of a split rendition: which exist, who may claim one, when the join may run, and
what fails the rendition. Pure rules, no NATS: the transcoders and the scheduler apply them by
compare-and-set on the records they read."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import pytest

from shared.blobs.keys import output_key, source_copy_key
from shared.blobs.keys import part_key as part_blob_key
from shared.jobs import state as jobstate
from shared.jobs.state import InvalidTransition
from shared.messages.records import Lease, Output, Part, Rendition, RenditionState, Split
from shared.messages.work import (
    WORK_DECODER,
    WORKS_DECODER,
    JoinWork,
    SegmentWork,
    TranscodeWork,
)
from shared.nats.leases import holder
from shared.wire import JobError

R = RenditionState
NOW = 1_000_000.0
ERROR = JobError(code="encode_failed", reason="The encoder stopped.", retryable=True)
OUTPUT = Output(
    blob="parts/k1/k1/1/v0000-1.mkv", size=10, sha256="0" * 64, container="mkv", mime="video/x-m"
)


@dataclass(frozen=True)
class Cut:
    """A segment as the media core plans one (index, start, end, frames)."""

    index: int
    start: float
    end: float | None
    frames: int


CUTS = [Cut(0, 0.0, 60.0, 1440), Cut(1, 60.0, 121.5, 1476), Cut(2, 121.5, None, 700)]


def a_split(segments: int = 3, *, audio: bool = True) -> Split:
    return Split(
        segments=segments,
        audio=audio,
        seconds=150.0,
        encoder="libx264",
        segment_seconds=60.0,
        at=NOW,
    )


def a_rendition(state: RenditionState = R.RUNNING, **changes: object) -> Rendition:
    r = Rendition(
        key="k1",
        generation=2,
        source="http://h/film.mkv",
        profile="optimized",
        container="mp4",
        pool="films",
        state=state,
        worker="planner",
        attempt=1,
        created_at=NOW,
        updated_at=NOW,
    )
    return msgspec.structs.replace(r, **changes)


def split_rendition(**changes: object) -> Rendition:
    return jobstate.split_rendition(a_rendition(**changes), a_split(), NOW)


def parts_of(r: Rendition) -> dict[str, Part]:
    assert r.split is not None
    return {p.name: p for p in jobstate.new_parts(r, r.split, CUTS, NOW)}


def with_states(parts: dict[str, Part], **states: RenditionState) -> list[Part]:
    return [
        msgspec.structs.replace(p, state=states.get(name, p.state)) for name, p in parts.items()
    ]


# ---- which parts a split has --------------------------------------------------------------------


def test_a_split_has_its_audio_then_one_part_per_segment_then_the_join_all_pending() -> None:
    """Given a rendition split into three segments with audio,
    when its parts are made,
    then they are the audio, v0000..v0002 with their segments' spans, and the join, in that
    order, pending in the rendition's pool under `<rendition>.<generation>.<name>`."""
    r = split_rendition()
    parts = jobstate.new_parts(r, a_split(), CUTS, NOW)

    assert [p.name for p in parts] == ["audio", "v0000", "v0001", "v0002", "join"]
    assert [p.kind for p in parts] == ["audio", "video", "video", "video", "join"]
    assert [p.key for p in parts] == [f"k1.2.{p.name}" for p in parts]
    assert {(p.state, p.pool, p.generation, p.rendition) for p in parts} == {
        (R.PENDING, "films", 2, "k1")
    }
    video = [p for p in parts if p.kind == "video"]
    assert [(p.index, p.start, p.end, p.frames) for p in video] == [
        (c.index, c.start, c.end, c.frames) for c in CUTS
    ]
    assert sorted(reversed(parts), key=jobstate.part_order) == parts


def test_a_split_without_audio_has_no_audio_part() -> None:
    parts = jobstate.new_parts(a_rendition(), a_split(audio=False), CUTS, NOW)
    assert [p.name for p in parts] == ["v0000", "v0001", "v0002", "join"]


def test_parts_are_made_only_from_the_segments_the_split_counts() -> None:
    with pytest.raises(ValueError, match="3 segments"):
        jobstate.new_parts(a_rendition(), a_split(), CUTS[:2], NOW)
    with pytest.raises(ValueError):
        jobstate.new_parts(a_rendition(), a_split(), [CUTS[1], CUTS[0], CUTS[2]], NOW)


# ---- the rendition, split and joined ----------------------------------------------------------


def test_a_split_rendition_stays_running_without_a_worker_of_its_own() -> None:
    r = split_rendition(ack_subject="$JS.ACK.x")
    assert r.state is R.RUNNING and r.split == a_split()
    assert r.worker is None and r.ack_subject == ""
    assert jobstate.split_live(r, 2) and not jobstate.split_live(r, 1)


@pytest.mark.parametrize("state", [R.PENDING, R.DISPATCHED, R.DONE, R.FAILED, R.CANCELLED])
def test_only_a_running_rendition_is_split(state: RenditionState) -> None:
    with pytest.raises(InvalidTransition):
        jobstate.split_rendition(a_rendition(state), a_split(), NOW)


def test_a_rendition_is_split_once() -> None:
    with pytest.raises(InvalidTransition):
        jobstate.split_rendition(split_rendition(), a_split(), NOW)


def test_the_join_finishes_its_rendition_once_and_only_at_its_generation() -> None:
    """Given a split rendition,
    when its join stores the output,
    then the rendition is done with that output; a second join, a join of another generation
    or of a rendition that was never split is refused."""
    output = msgspec.structs.replace(OUTPUT, blob="outputs/k1/k1/2-1.mp4", container="mp4")
    done = jobstate.joined(split_rendition(), 2, output, NOW + 5)
    assert done.state is R.DONE and done.output == output and done.finished_at == NOW + 5

    for refused, generation in [(done, 2), (split_rendition(), 1), (a_rendition(), 2)]:
        with pytest.raises(InvalidTransition):
            jobstate.joined(refused, generation, output, NOW + 6)


# ---- claiming, taking over, owning --------------------------------------------------------------


@pytest.mark.parametrize("state", [R.PENDING, R.DISPATCHED])
def test_a_waiting_part_of_a_live_split_is_claimed(state: RenditionState) -> None:
    r = split_rendition()
    part = msgspec.structs.replace(parts_of(r)["v0001"], state=state)

    assert jobstate.can_claim_part(part, r, "w1", redelivered=False)
    claimed = jobstate.claim_part(part, "w1", NOW + 1, "$JS.ACK.a")
    assert claimed.state is R.RUNNING and claimed.attempt == 1
    assert claimed.ack_subject == "$JS.ACK.a" and claimed.started_at == NOW + 1
    assert jobstate.part_owned_by(claimed, "w1", 1)


def test_a_running_part_is_taken_over_only_when_its_work_comes_back_to_another_worker() -> None:
    """Given a part running on w1,
    when its work item is redelivered to w2 (w1 stopped heartbeating),
    then w2 takes it over as attempt 2 and w1 no longer owns it; a delivery that is not a
    redelivery, or a redelivery to w1 itself, takes nothing."""
    r = split_rendition()
    first = jobstate.claim_part(parts_of(r)["v0001"], "w1", NOW)

    assert not jobstate.can_claim_part(first, r, "w2", redelivered=False)
    assert not jobstate.can_claim_part(first, r, "w1", redelivered=True)
    assert jobstate.can_claim_part(first, r, "w2", redelivered=True)

    second = jobstate.claim_part(first, "w2", NOW + 20)
    assert second.attempt == 2 and second.worker == "w2"
    assert jobstate.part_owned_by(second, "w2", 2)
    assert not jobstate.part_owned_by(second, "w1", 1)


def test_no_part_is_claimed_once_its_rendition_is_not_split_at_its_generation() -> None:
    """A cancelled, failed or finished rendition, one renewed to another generation, one not
    split (any more) or gone: its parts are not worked on."""
    r = split_rendition()
    part = parts_of(r)["v0000"]
    for gone in [
        msgspec.structs.replace(r, state=R.CANCELLED),
        msgspec.structs.replace(r, state=R.FAILED),
        jobstate.joined(r, 2, OUTPUT, NOW),
        msgspec.structs.replace(r, generation=3),
        msgspec.structs.replace(r, split=None),
        msgspec.structs.replace(r, key="k2"),
        None,
    ]:
        assert not jobstate.can_claim_part(part, gone, "w1", redelivered=True)


@pytest.mark.parametrize("state", [R.DONE, R.FAILED, R.CANCELLED])
def test_an_ended_part_is_never_claimed_again(state: RenditionState) -> None:
    r = split_rendition()
    part = msgspec.structs.replace(parts_of(r)["v0000"], state=state, worker="w1")
    assert not jobstate.can_claim_part(part, r, "w2", redelivered=True)


def test_a_retried_part_waits_for_a_transcoder_and_its_last_owner_lets_go() -> None:
    running = jobstate.claim_part(parts_of(split_rendition())["audio"], "w1", NOW)
    again = jobstate.retry_part(running, ERROR, NOW + 1)
    assert again.state is R.DISPATCHED and again.worker is None and again.last_error == ERROR
    assert not jobstate.part_owned_by(again, "w1", 1)
    assert jobstate.claim_part(again, "w2", NOW + 2).attempt == 2


def test_a_stored_part_keeps_its_file_and_forgets_its_last_error() -> None:
    running = jobstate.claim_part(parts_of(split_rendition())["v0000"], "w1", NOW)
    retried = jobstate.claim_part(jobstate.retry_part(running, ERROR, NOW), "w1", NOW + 1)
    done = jobstate.succeed_part(retried, OUTPUT, NOW + 2)
    assert done.state is R.DONE and done.output == OUTPUT and done.last_error is None
    assert not jobstate.part_owned_by(done, "w1", 2)


def test_a_part_of_an_ended_rendition_is_cancelled_unless_it_ended_itself() -> None:
    parts = parts_of(split_rendition())
    for state in [R.PENDING, R.DISPATCHED, R.RUNNING]:
        part = msgspec.structs.replace(parts["v0002"], state=state)
        assert jobstate.cancel_part(part, NOW).state is R.CANCELLED
    for state in [R.DONE, R.FAILED, R.CANCELLED]:
        with pytest.raises(InvalidTransition):
            jobstate.cancel_part(msgspec.structs.replace(parts["v0002"], state=state), NOW)


def test_dispatching_a_part_counts_its_publications() -> None:
    part = jobstate.dispatch_part(parts_of(split_rendition())["join"], NOW + 3)
    assert part.state is R.DISPATCHED and part.dispatch_seq == 1 and part.dispatched_at == NOW + 3
    stored = jobstate.succeed_part(jobstate.claim_part(part, "w1", NOW + 4), OUTPUT, NOW + 5)
    with pytest.raises(InvalidTransition):
        jobstate.dispatch_part(stored, NOW + 6)


# ---- join and failure ---------------------------------------------------------------------------


def test_the_join_may_run_once_every_video_part_and_the_audio_are_stored() -> None:
    """Given a split's parts,
    when all but one of the video and audio parts are stored,
    then the join may not run yet; once the last is stored it may, whatever the join's own state."""
    parts = parts_of(split_rendition())
    split = a_split()
    almost = {"audio": R.DONE, "v0000": R.DONE, "v0002": R.DONE, "v0001": R.RUNNING}
    assert not jobstate.ready_to_join(split, with_states(parts, **almost))
    assert not jobstate.ready_to_join(split, with_states(parts, **{**almost, "v0001": R.FAILED}))

    every = {**almost, "v0001": R.DONE}
    assert jobstate.ready_to_join(split, with_states(parts, **every))
    assert jobstate.ready_to_join(split, with_states(parts, **every, join=R.DISPATCHED))


def test_the_join_waits_for_parts_not_seen_yet_and_for_the_audio() -> None:
    parts = with_states(parts_of(split_rendition()), v0000=R.DONE, v0001=R.DONE, v0002=R.DONE)
    assert not jobstate.ready_to_join(a_split(), parts)  # the audio still runs
    assert jobstate.ready_to_join(a_split(audio=False), parts)

    seen = [p for p in parts if p.name != "v0002"]  # its record not read yet
    assert not jobstate.ready_to_join(a_split(audio=False), seen)


def test_the_first_part_that_failed_for_good_names_the_rendition_failure() -> None:
    parts = parts_of(split_rendition())
    assert jobstate.part_failed(parts.values()) is None
    assert jobstate.part_failed(with_states(parts, v0000=R.DONE, v0001=R.RUNNING)) is None

    failed = jobstate.part_failed(with_states(parts, v0002=R.FAILED, v0001=R.FAILED))
    assert failed is not None and failed.name == "v0001"


# ---- leases, stored files, work items ------------------------------------------------------------


def test_a_part_holds_its_lease_under_its_own_key_and_a_whole_rendition_under_its_key() -> None:
    whole = Lease(generation=2, since=NOW, rendition="k1", pool="films")
    segment = msgspec.structs.replace(whole, part="v0007")
    assert holder(whole) == "k1"
    assert holder(segment) == jobstate.part_key("k1", 2, "v0007") == "k1.2.v0007"


def test_part_files_live_apart_from_outputs_one_per_attempt() -> None:
    first = part_blob_key("ab12", 2, "v0007", 1, "mkv")
    second = part_blob_key("ab12", 2, "v0007", 2, "mkv")
    assert first == "parts/ab/ab12/2/v0007-1.mkv" and first != second
    assert source_copy_key("ab12", 2) == "parts/ab/ab12/2/source.mkv"
    assert not output_key("ab12", 2, 1, "mp4").startswith("parts/")


def test_every_kind_of_work_item_decodes_from_the_pool_subject() -> None:
    """Given a segment, a join and a whole transcode as the scheduler would publish them,
    then the union decoder tells them apart by their `type`, while the decoder of whole
    transcodes refuses the new kinds (an old transcoder treats them as poison)."""
    segment = SegmentWork(
        key="k1",
        generation=2,
        part="v0001",
        kind="video",
        dispatch_seq=1,
        source="http://h/film.mkv",
        profile="optimized",
        container="mp4",
        encoder="libx264",
        start=60.0,
        end=121.5,
        frames=1476,
        dispatched_at=NOW,
    )
    join = JoinWork(
        key="k1",
        generation=2,
        dispatch_seq=1,
        profile="optimized",
        container="mp4",
        dispatched_at=NOW,
    )
    whole = TranscodeWork(
        key="k1",
        generation=1,
        dispatch_seq=1,
        source="http://h/film.mkv",
        profile="optimized",
        container="mp4",
        dispatched_at=NOW,
    )
    for work in (segment, join, whole):
        assert WORKS_DECODER.decode(msgspec.json.encode(work)) == work
    assert WORK_DECODER.decode(msgspec.json.encode(whole)) == whole
    for new_kind in (segment, join):
        with pytest.raises(msgspec.ValidationError):
            WORK_DECODER.decode(msgspec.json.encode(new_kind))


def test_records_written_before_splits_existed_read_as_whole_transcodes() -> None:
    old = msgspec.json.decode(msgspec.json.encode(a_rendition()), type=dict)
    del old["split"]
    assert msgspec.json.decode(msgspec.json.encode(old), type=Rendition).split is None
    lease = msgspec.json.decode(b'{"generation": 1, "since": 1.0, "rendition": "k1"}', type=Lease)
    assert lease.part == "" and holder(lease) == "k1"
