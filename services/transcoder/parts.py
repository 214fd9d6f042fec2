"""One part of a split rendition, start to finish: claim it, encode it (a span of the video, or
the whole audio) into a file of the store's parts area, or join the stored parts into the
rendition's output; record the outcome.

The same machinery as a whole transcode (`runner.py`): the claim by compare-and-set (a
redelivery takes over a part whose transcoder stopped heartbeating), heartbeats, a watch on the
part and on its rendition (a cancelled rendition stops every part's ffmpeg), a session per
attempt, the same settlement and `max_attempts` per part. Progress folds into the rendition's
one record (`part_progress.py`). Reads and writes of part records live in `part_records.py`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import structlog
from structlog.contextvars import bound_contextvars

from services.transcoder.attempt import (
    TranscodeFailed,
    cpu_choice,
    readable_source,
    scrub_argv,
    store_output,
    stored_file,
)
from services.transcoder.config import TranscoderSettings
from services.transcoder.encode import Proxied, encode_to_file
from services.transcoder.helpers import Attempt, plan_of, probe_source
from services.transcoder.joining import blob_of, joined_output, stored_parts
from services.transcoder.limits import RunLimits, with_output_limit
from services.transcoder.names import OutputNames
from services.transcoder.node import NodeState
from services.transcoder.part_progress import STALE_ACK_WAITS, PartProgress
from services.transcoder.part_records import PartRecords
from services.transcoder.pipelines import Pipelines
from services.transcoder.sessions import SessionRecorder, Sessions
from services.transcoder.source_proxy import SourceAccess, SourceProxy
from shared.blobs.keys import output_key, part_key
from shared.blobs.store import StoredBlob
from shared.blobs.users import Stores
from shared.fleet import Fleet
from shared.jobs.store import RecordStore
from shared.media import builtin, get_container, preset_profile
from shared.media.ffmpeg import FfmpegResult
from shared.media.pipelines import PipelineChoice
from shared.media.plan import Plan
from shared.media.profiles import ContainerSpec, Profile
from shared.media.segments import (
    SEGMENT_CONTAINER,
    Segment,
    audio_args,
    join_args,
    segment_args,
    write_concat_list,
)
from shared.messages.records import Output, Part, Rendition
from shared.messages.work import JoinWork, SegmentWork
from shared.nats.consumer import ACK, Received, Settle
from shared.nats.kv import TypedKV
from shared.sources import scrub
from shared.wire import JobError

log = structlog.get_logger("vidmesh.transcoder")


class PartRunner:
    """The transcoder's handler of `SegmentWork` and `JoinWork`."""

    def __init__(
        self,
        store: RecordStore,
        parts: TypedKV[Part],
        stores: Stores,
        settings: TranscoderSettings,
        *,
        worker_id: str,
        ffmpeg: str,
        sessions: Sessions,
        output_names: OutputNames,
        access: SourceAccess,
        media_roots: Callable[[], list[str]],
        scratch_folder: Callable[[], Path],
        node: NodeState | None = None,
        fleet: Fleet | None = None,
    ) -> None:
        self.store = store
        self.stores = stores
        self.settings = settings
        self.worker_id = worker_id
        self.ffmpeg = ffmpeg
        self.sessions = sessions
        self.output_names = output_names
        self.access = access
        self.media_roots = media_roots
        self.scratch_folder = scratch_folder
        # video segments may decode on this node's GPU (None: every part runs on the CPU)
        self.pipelines = (
            None if node is None or fleet is None else Pipelines(node, fleet, settings.pool)
        )
        self.records = PartRecords(
            store, parts, stores, worker_id=worker_id, max_attempts=settings.max_attempts
        )
        self.running: dict[str, Part] = {}  # part key -> the part
        self.running_jobs: dict[str, list[str]] = {}  # part key -> the jobs its rendition serves

    async def __call__(self, received: Received[SegmentWork | JoinWork]) -> Settle:
        """Claim the part and run it."""
        work, delivered = received.message, received.attempt
        name = work.part if isinstance(work, SegmentWork) else "join"
        with bound_contextvars(part=name, delivery=delivered):
            claimed = await self.records.claim(
                work, redelivered=delivered > 1, ack_subject=received.ack_subject
            )
            if claimed is None:
                return ACK
            part, r = claimed
            self.running[part.key] = part
            self.running_jobs[part.key] = list(work.jobs)
            try:
                return await self._run(received, work, part, r)
            finally:
                self.running.pop(part.key, None)
                self.running_jobs.pop(part.key, None)

    async def _run(
        self,
        received: Received[SegmentWork | JoinWork],
        work: SegmentWork | JoinWork,
        part: Part,
        r: Rendition,
    ) -> Settle:
        started = time.monotonic()
        reporter = PartProgress(
            self.store.progress,
            r,
            part,
            interval=self.settings.progress_interval,
            stale_after=STALE_ACK_WAITS * self.settings.ack_wait,
        )
        attempt = Attempt(
            received,
            self.settings,
            self.access,
            reporter=reporter,
            session=self.sessions.start(
                reporter,
                r,
                attempt=part.attempt,
                jobs=work.jobs,
                owner=work.owner,
                source=work.source if isinstance(work, SegmentWork) else r.source,
                part=part.name,
            ),
            watch=lambda lost: self.records.watch(part, r, lost),
            fail=lambda error: self.records.record_failure(part, error),
            hand_back=lambda: self.records.hand_back(part),
        )
        if isinstance(work, JoinWork):
            joined = await attempt.run(
                lambda proxy: self._join(work, part, r, reporter, attempt.session, proxy)
            )
            if isinstance(joined, Settle):
                return joined
            settle = await self.records.record_join(r, part, joined, time.monotonic() - started)
            if settle is ACK:
                await reporter.stored()
            return settle
        stored = await attempt.run(
            lambda proxy: self._encode(work, part, r, reporter, attempt.session, proxy)
        )
        if isinstance(stored, Settle):
            return stored
        settle = await self.records.record_success(part, stored)
        if settle is ACK:
            await reporter.finished()
        return settle

    def _limits(self) -> RunLimits:
        # the planner checked the source's duration before it split it
        return RunLimits(
            stall_seconds=self.settings.stall_seconds,
            max_output_bytes=self.settings.max_output_bytes,
            max_source_seconds=None,
        )

    def _scratch_file(self, part: Part, extension: str) -> Path:
        scratch = self.scratch_folder()
        scratch.mkdir(parents=True, exist_ok=True)
        return scratch / f"{part.key}-{part.attempt}{extension}"

    async def _encode(
        self,
        work: SegmentWork,
        part: Part,
        r: Rendition,
        reporter: PartProgress,
        session: SessionRecorder,
        proxy: SourceProxy,
    ) -> Output:
        """Encode the part into its file under `parts/` of the service's store."""
        profile = preset_profile(work.profile, work.spec or builtin(work.profile))
        container = get_container(work.container)
        if work.stored_source:
            source = await stored_file(self.stores.service, work.stored_source)
        else:
            source = await readable_source(work.source, work.owner, self.stores, self.media_roots())
        probe = r.probe
        if probe is None:  # the planner records it; a part never goes without one
            reporter.stage("probing")
            probe = await probe_source(self.access, source, self.settings.probe_timeout)
        plan = plan_of(probe, profile, container)
        video = work.kind == "video"
        extension = SEGMENT_CONTAINER.extension if video else container.extension
        out = self._scratch_file(part, extension)
        key = part_key(r.key, r.generation, part.name, part.attempt, extension.lstrip("."))
        proxied = Proxied(proxy, self.access.ffmpeg_env(proxy))

        async def encode(choice: PipelineChoice) -> tuple[FfmpegResult, StoredBlob]:
            argv = self._argv(work, part, source, out, plan, profile, container, proxy, choice)
            session.update(
                pipeline=choice.name, pipeline_reason=choice.reason, argv=scrub_argv(argv)
            )
            log.info("ffmpeg.start", part=part.name, start=work.start, pipeline=choice.name)
            reporter.stage("encoding")
            try:
                result = await encode_to_file(argv, out, reporter, self._limits(), proxied)
                return result, await store_output(self.stores.service, key, out)
            finally:
                out.unlink(missing_ok=True)

        def on_cpu(why: str) -> PipelineChoice:
            return cpu_choice(profile, plan, probe, why)

        if not video or self.pipelines is None:
            result, stored = await encode(on_cpu(f"the {work.kind} of a split job runs here"))
        else:
            choice = await self.pipelines.for_segment(profile, plan, probe)
            result, stored = await self.pipelines.with_fallback(encode, choice, on_cpu, session)
        session.update(stderr_tail=scrub(result.stderr_tail))
        log.info("ffmpeg.done", seconds=round(result.wall_seconds, 2), size=stored.size)
        return Output(
            blob=stored.key,
            size=stored.size,
            sha256=stored.sha256,
            container=SEGMENT_CONTAINER.name if work.kind == "video" else container.name,
            mime=SEGMENT_CONTAINER.mime if work.kind == "video" else container.mime,
            duration=None if work.end is None else work.end - work.start,
            video=plan.video if work.kind == "video" else "",
            audio=plan.audio if work.kind == "audio" else "",
        )

    def _argv(
        self,
        work: SegmentWork,
        part: Part,
        source: str,
        out: Path,
        plan: Plan,
        profile: Profile,
        container: ContainerSpec,
        proxy: SourceProxy,
        choice: PipelineChoice,
    ) -> list[str]:
        """ffmpeg's argv for the part: its span of the video on `choice` (whose encoder is the
        split's), or the whole audio."""
        options = self.access.ffmpeg_options(source, proxy)
        threads = self.settings.ffmpeg_threads
        if work.kind != "video":
            argv = audio_args(
                self.ffmpeg,
                source,
                str(out),
                plan,
                profile,
                container,
                threads=threads,
                input_options=options,
            )
            return with_output_limit(argv, self.settings.max_output_bytes)
        if work.encoder and work.encoder != profile.encoder:
            raise TranscodeFailed(
                JobError(
                    code="internal_error",
                    reason=f"The split's encoder {work.encoder} is not the profile's.",
                    retryable=False,
                )
            )
        segment = Segment(index=part.index, start=work.start, end=work.end, frames=work.frames)
        argv = segment_args(
            self.ffmpeg,
            source,
            str(out),
            segment,
            plan,
            profile,
            pipeline=choice,
            threads=threads,
            input_options=options,
        )
        return with_output_limit(argv, self.settings.max_output_bytes)

    async def _join(
        self,
        work: JoinWork,
        part: Part,
        r: Rendition,
        reporter: PartProgress,
        session: SessionRecorder,
        proxy: SourceProxy,
    ) -> Output:
        """Join the stored parts (concat, streams copied) into the rendition's output, stored
        with its SHA-256 as a whole transcode stores it."""
        container = get_container(work.container)
        profile = preset_profile(work.profile, work.spec or builtin(work.profile))
        assert r.split is not None  # the claim checked it
        videos, audio = stored_parts(await self.records.parts_of(r), r.split)
        files = [await stored_file(self.stores.service, blob_of(p)) for p, _ in videos]
        listing = write_concat_list(
            self._scratch_file(part, ".ffconcat"), files, [d for _, d in videos]
        )
        audio_file = None
        if audio is not None:
            audio_file = await stored_file(self.stores.service, blob_of(audio))
        out = self._scratch_file(part, container.extension)
        argv = join_args(
            self.ffmpeg,
            str(listing),
            audio_file,
            str(out),
            container,
            video_start=videos[0][0].start,
        )
        session.update(pipeline="cpu", pipeline_reason="streams copied", argv=scrub_argv(argv))
        extension = container.extension.lstrip(".")
        # one key per join attempt: a join that lost deletes only its own file
        service_key = output_key(r.key, r.generation, r.attempt, f"join{part.attempt}.{extension}")
        ref, store, key = await self.output_names.target(
            self.stores, work, r.key, extension, service_key
        )
        await reporter.storing()
        proxied = Proxied(proxy, self.access.ffmpeg_env(proxy))
        try:
            result = await encode_to_file(argv, out, reporter, self._limits(), proxied)
            stored = await store_output(store, key, out)
        finally:
            out.unlink(missing_ok=True)
            listing.unlink(missing_ok=True)
        session.update(stderr_tail=scrub(result.stderr_tail))
        log.info("join.done", seconds=round(result.wall_seconds, 2), size=stored.size)
        return joined_output(ref, stored, r, profile, container)
