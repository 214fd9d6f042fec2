"""The scheduler runs a split rendition's parts like renditions: each leased under the pool's
limit and published on the pool's queue, the join once every other part is stored, and every
part of a cancelled job cancelled and dropped with its files.

No transcoder here runs parts yet: the test takes the pool's work items itself and writes what a
transcoder writes (the claim, the split, each part's outcome, the join), by the same
compare-and-set functions, against a real nats-server and the real scheduler and storage.
"""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import msgspec
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig
from structlog.testing import capture_logs

from shared.blobs.keys import part_key as blob_key
from shared.jobs import state as jobstate
from shared.jobs.store import RecordStore
from shared.messages.records import Lease, Output, Part, Rendition, RenditionState, Split
from shared.messages.work import WORKS_DECODER, JoinWork, SegmentWork, TranscodeWork, Work
from shared.nats.kv import TypedKV
from shared.nats.topology import ensure_topology
from tests.harness import ALICE, Client, System, eventually, start_system, stop_system
from tests.jellyfin_standin import JellyfinStandIn

R = RenditionState
WORKER = "test-transcoder"
SEGMENTS = 4
LIMIT = 2


class Segment(msgspec.Struct, frozen=True):
    index: int
    start: float
    end: float | None
    frames: int


class PartTranscoder:
    """The test in a transcoder's place: it takes the pool's work items and writes their
    outcomes as a transcoder does."""

    def __init__(self, system: System, tmp: Path) -> None:
        self.system = system
        self.tmp = tmp
        self.js = system.nc.jetstream()

    async def start(self) -> PartTranscoder:
        names = self.system.names
        buckets = await ensure_topology(self.js, names)
        self.store = RecordStore(self.js, names, buckets)
        self.parts = TypedKV(buckets.parts, Part)
        self.leases = TypedKV(buckets.leases, Lease)
        self.sub = await self.js.pull_subscribe(
            names.work(),
            durable=names.transcode_consumer(),
            stream=names.work_stream,
            config=ConsumerConfig(ack_wait=60.0),
        )
        return self

    async def take(self) -> tuple[Work, Msg]:
        """The next work item on the pool's queue."""

        async def fetched() -> list[Msg]:
            try:
                return await self.sub.fetch(1, timeout=0.5)
            except TimeoutError:
                return []

        [msg] = await eventually(fetched, what="a work item")
        return WORKS_DECODER.decode(msg.data), msg

    async def split(self, work: TranscodeWork) -> Rendition:
        """Claim the rendition, create its parts, mark it split (the planner's writes)."""
        now = time.time()
        r, _ = await self.store.change_rendition(
            work.key, lambda r: jobstate.claim(r, WORKER, now) if r else None
        )
        assert r is not None and r.state is R.RUNNING
        split = Split(
            segments=SEGMENTS,
            audio=True,
            seconds=20.0,
            encoder="libx264",
            segment_seconds=5.0,
            at=now,
        )
        spans = [Segment(n, 5.0 * n, 5.0 * (n + 1), 120) for n in range(SEGMENTS)]
        for p in jobstate.new_parts(r, split, spans, now):
            await self.parts.create(p.key, p)
        r, changed = await self.store.change_rendition(
            work.key, lambda r: jobstate.split_rendition(r, split, now) if r else None
        )
        assert changed and r is not None
        return r

    async def claim(self, key: str) -> Part:
        now = time.time()
        claimed, _, changed = await self.parts.change(
            key, lambda p: jobstate.claim_part(p, WORKER, now) if p else None
        )
        assert changed and claimed is not None
        return claimed

    async def store_part(self, p: Part) -> Output:
        """Store a file for the part and record it done (a transcoder's success)."""
        key = blob_key(p.rendition, p.generation, p.name, p.attempt, "mp4")
        file = self.tmp / f"{p.name}.mp4"
        file.write_bytes(b"part")
        await self.system.blobs.put_file(key, file)
        output = Output(blob=key, size=4, sha256="0" * 64, container="mp4", mime="video/mp4")
        now = time.time()
        _, _, changed = await self.parts.change(
            p.key, lambda found: jobstate.succeed_part(found, output, now) if found else None
        )
        assert changed
        return output

    async def join(self, work: JoinWork) -> None:
        """The join: the rendition done with its output, then the join part done."""
        join = await self.claim(jobstate.part_key(work.key, work.generation, "join"))
        output = Output(
            blob="outputs/joined.mp4", size=4, sha256="0" * 64, container="mp4", mime="video/mp4"
        )
        now = time.time()
        _, changed = await self.store.change_rendition(
            work.key, lambda r: jobstate.joined(r, work.generation, output, now) if r else None
        )
        assert changed
        _, _, changed = await self.parts.change(
            join.key, lambda p: jobstate.succeed_part(p, output, now) if p else None
        )
        assert changed

    async def parts_of(self, r: Rendition) -> dict[str, Part]:
        found = await self.parts.values(under=f"{r.key}.{r.generation}")
        return {p.name: p for p in found.values()}

    async def leased(self) -> dict[str, Lease]:
        return await self.leases.values(under="default")


async def split_job(
    system: System, alice: Client, jellyfin: JellyfinStandIn, transcoder: PartTranscoder
) -> tuple[str, Rendition]:
    """A job whose rendition the test's transcoder split into audio, four spans and a join."""
    job_id = await alice.submit(jellyfin.stream_url("fits", ALICE), device="device-1")
    work, msg = await transcoder.take()
    assert isinstance(work, TranscodeWork)
    r = await transcoder.split(work)
    await msg.ack()
    return job_id, r


async def test_a_split_renditions_parts_go_out_within_the_limit_and_one_join_finishes_it(
    env: dict[str, str], http: aiohttp.ClientSession, jellyfin: JellyfinStandIn, tmp_path: Path
) -> None:
    # Given a pool of two slots, and a job whose rendition a transcoder split into parts
    settings = {**env, "MAX_CONCURRENT_JOBS": str(LIMIT)}
    system = await start_system(settings, "scheduler", "storage", "gateway")
    try:
        alice = Client(http, system.url, ALICE)
        transcoder = await PartTranscoder(system, tmp_path).start()
        job_id, r = await split_job(system, alice, jellyfin, transcoder)

        # When the test's transcoder stores each part it is given, two at a time
        given: list[str] = []
        stored: list[str] = []
        outstanding: list[tuple[Part, Msg]] = []
        while len(stored) < SEGMENTS + 1:
            while len(outstanding) < LIMIT and len(given) < SEGMENTS + 1:
                work, msg = await transcoder.take()
                assert isinstance(work, SegmentWork) and work.key == r.key, work
                given.append(work.part)
                outstanding.append((await transcoder.claim(f"{r.key}.1.{work.part}"), msg))
                # Then never more parts hold leases than the pool's limit, and none of them
                # is the split rendition itself
                leases = await transcoder.leased()
                assert len(leases) <= LIMIT and all(lease.part for lease in leases.values())
            p, msg = outstanding.pop(0)
            stored.append((await transcoder.store_part(p)).blob)
            await msg.ack()
        # ...and, every part stored, the join is given and done
        work, msg = await transcoder.take()
        assert isinstance(work, JoinWork) and work.key == r.key
        await transcoder.join(work)
        await msg.ack()

        # Then the audio went first, then the spans in order, and one join completed the job
        assert given == ["audio", "v0000", "v0001", "v0002", "v0003"]
        await alice.wait_status(job_id, "completed")
        # ...the parts and their files are gone, and so are the leases
        names = system.names

        async def dropped() -> bool:
            left = await transcoder.parts_of(r)
            files = [await system.blobs.stat(blob) for blob in stored]
            return not left and not any(files) and not await transcoder.leased()

        await eventually(dropped, what="the parts, their files and leases to go")
        # ...and no second join was ever published
        info = await system.nc.jetstream().consumer_info(
            names.work_stream, names.transcode_consumer()
        )
        assert info.num_pending == 0 and info.num_ack_pending == 0
    finally:
        await stop_system(system)


async def test_a_cancelled_jobs_parts_are_cancelled_and_dropped(
    env: dict[str, str], http: aiohttp.ClientSession, jellyfin: JellyfinStandIn, tmp_path: Path
) -> None:
    # Given a split job with one part stored and one running on the test's transcoder
    settings = {**env, "MAX_CONCURRENT_JOBS": str(LIMIT)}
    system = await start_system(settings, "scheduler", "storage", "gateway")
    try:
        alice = Client(http, system.url, ALICE)
        transcoder = await PartTranscoder(system, tmp_path).start()
        job_id, r = await split_job(system, alice, jellyfin, transcoder)
        first, msg = await transcoder.take()
        assert isinstance(first, SegmentWork)
        stored = await transcoder.store_part(await transcoder.claim(f"{r.key}.1.{first.part}"))
        await msg.ack()
        second, _ = await transcoder.take()
        assert isinstance(second, SegmentWork)
        running = await transcoder.claim(f"{r.key}.1.{second.part}")

        # When the job is cancelled
        with capture_logs() as logs:
            status, body, _ = await alice.request("DELETE", f"/cancel-job/{job_id}")
            assert status == 200, body

            # Then every live part is cancelled (the running one's transcoder would stop)...
            async def cancelled() -> bool:
                return any(e["event"] == "parts.cancelled" for e in logs)

            await eventually(cancelled, what="the live parts to be cancelled")

            # ...then the parts, the stored part's file and the leases are dropped
            async def dropped() -> bool:
                left = await transcoder.parts_of(r)
                file = await system.blobs.stat(stored.blob)
                return not left and file is None and not await transcoder.leased()

            await eventually(dropped, what="the parts, their file and leases to go")
        cancel = next(e for e in logs if e["event"] == "parts.cancelled")
        # every part but the stored one was live: the running one and all that waited
        assert cancel["parts"] == SEGMENTS + 2 - 1
        assert running.state is R.RUNNING
        await alice.wait_status(job_id, "cancelled")
    finally:
        await stop_system(system)
