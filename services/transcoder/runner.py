"""One work item, start to finish: claim the rendition, transcode, store, record the outcome.

Beside ffmpeg run three helpers: a heartbeat that keeps JetStream from handing the work to
another transcoder, a watch on the rendition record that stops ffmpeg when the rendition is
cancelled or taken over, and the progress writer. Reads and writes of the rendition record
itself live in `records.py`.
"""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import structlog
from structlog.contextvars import bound_contextvars

from services.transcoder.attempt import (
    HardwareFailed,
    TranscodeFailed,
    cpu_choice,
    duration_of,
    readable_source,
    scrub_argv,
    store_output,
)
from services.transcoder.config import TranscoderSettings
from services.transcoder.encode import Proxied, encode_streaming, encode_to_file
from services.transcoder.helpers import Attempt, plan_of, probe_source
from services.transcoder.limits import RunLimits, source_refusal, with_output_limit
from services.transcoder.names import OutputNames
from services.transcoder.node import NodeState
from services.transcoder.parts import PartRunner
from services.transcoder.pipelines import note_fallback
from services.transcoder.progress import ProgressReporter
from services.transcoder.records import RenditionRecords
from services.transcoder.sessions import SessionRecorder, Sessions
from services.transcoder.source_copy import SourceCopies
from services.transcoder.source_proxy import SourceAccess, SourceProxy
from services.transcoder.split import Splitter
from shared.blobs.keys import output_key
from shared.blobs.users import Stores
from shared.fleet import Fleet
from shared.jobs.store import RecordStore
from shared.media import (
    build_args,
    builtin,
    get_container,
    preset_profile,
)
from shared.media.pipelines import PipelineChoice, choose_pipeline
from shared.media.plan import Plan
from shared.media.probe import ProbeResult
from shared.media.profiles import Profile
from shared.messages.fleet import DEVICE_PIPELINES
from shared.messages.records import Output, Part, Rendition, Split
from shared.messages.work import JoinWork, SegmentWork, TranscodeWork, Work
from shared.nats.consumer import ACK, Received, Settle
from shared.nats.kv import TypedKV
from shared.nats.topology import describe
from shared.settings import LiveSettings
from shared.sources import scrub

log = structlog.get_logger("vidmesh.transcoder")


class WorkRunner:
    """The transcoder's message handler."""

    def __init__(
        self,
        store: RecordStore,
        stores: Stores,
        settings: TranscoderSettings,
        *,
        worker_id: str,
        ffmpeg: str,
        scratch: Path,
        node: NodeState,
        fleet: Fleet,
        output_names: OutputNames,
        access: SourceAccess,
        parts: TypedKV[Part],
        paths: LiveSettings | None = None,
    ) -> None:
        self.node = node
        # The paths settings group, where an operator may move media roots and scratch.
        self.paths = paths
        self.output_names = output_names
        self.access = access
        self.fleet = fleet
        self.store = store
        self.stores = stores
        self.settings = settings
        self.worker_id = worker_id
        self.ffmpeg = ffmpeg
        self.scratch = scratch
        self.records = RenditionRecords(
            store, stores, worker_id=worker_id, max_attempts=settings.max_attempts
        )
        self.sessions = Sessions(fleet.sessions, worker_id, node.host, settings.pool)
        self.parts = PartRunner(
            store,
            parts,
            stores,
            settings,
            node=node,
            fleet=fleet,
            worker_id=worker_id,
            ffmpeg=ffmpeg,
            sessions=self.sessions,
            output_names=output_names,
            access=access,
            media_roots=self.media_roots,
            scratch_folder=self.scratch_folder,
        )
        copies = SourceCopies(
            store,
            stores,
            settings,
            ffmpeg=ffmpeg,
            access=access,
            scratch_folder=self.scratch_folder,
        )
        self.splitter = Splitter(store, parts, self.records, fleet, settings, access, copies)
        self.running: dict[str, Rendition] = {}
        self.running_jobs: dict[str, list[str]] = {}  # rendition key -> the jobs it serves

    def running_renditions(self) -> set[str]:
        """The renditions this worker runs now, whole or some of their parts."""
        return {*self.running, *(p.rendition for p in self.parts.running.values())}

    def running_job_ids(self) -> set[str]:
        running = [*self.running_jobs.values(), *self.parts.running_jobs.values()]
        return {job for jobs in running for job in jobs}

    def media_roots(self) -> list[str]:
        """The folders local sources may come from now (the paths settings', else configured)."""
        configured = self.settings.media_root_list
        return configured if self.paths is None else self.paths.media_roots(configured)

    def scratch_folder(self) -> Path:
        """This worker's scratch folder now: under the paths settings' folder, when set."""
        moved = self.paths.current.paths.scratch_dir if self.paths is not None else None
        return self.scratch if moved is None else Path(moved) / self.worker_id

    async def __call__(self, received: Received[Work]) -> Settle:
        """Run a work item: a whole rendition here, one of a split rendition's parts in `parts`;
        the kit has bound its key and generation to the log."""
        match received.message:
            case SegmentWork() | JoinWork():
                return await self.parts(received)  # type: ignore[arg-type]
            case TranscodeWork() as work:
                return await self._whole(received, work)  # type: ignore[arg-type]

    async def _whole(self, received: Received[TranscodeWork], work: TranscodeWork) -> Settle:
        """Claim the rendition and run it."""
        delivered = received.attempt
        with bound_contextvars(delivery=delivered):
            rendition = await self.records.claim(
                work, redelivered=delivered > 1, ack_subject=received.ack_subject
            )
            if rendition is None:
                return ACK
            self.running[work.key] = rendition
            self.running_jobs[work.key] = list(work.jobs)
            try:
                return await self._run(received, work, rendition)
            finally:
                self.running.pop(work.key, None)
                self.running_jobs.pop(work.key, None)

    async def _run(
        self, received: Received[TranscodeWork], work: TranscodeWork, r: Rendition
    ) -> Settle:
        started = time.monotonic()
        reporter = ProgressReporter(
            self.store.progress,
            key=r.key,
            generation=r.generation,
            attempt=r.attempt,
            interval=self.settings.progress_interval,
        )
        attempt = Attempt(
            received,
            self.settings,
            self.access,
            reporter=reporter,
            session=self.sessions.start(
                reporter, r, attempt=r.attempt, jobs=work.jobs, owner=work.owner, source=work.source
            ),
            watch=lambda lost: self.records.watch_ownership(r, lost),
            fail=lambda error: self.records.record_failure(r, error),
            hand_back=lambda: self.records.hand_back(r),
        )
        output = await attempt.run(
            lambda proxy: self._transcode(work, r, reporter, attempt.session, proxy)
        )
        if isinstance(output, Settle):
            return output
        if isinstance(output, Split):
            return ACK  # its parts are on the pool's queue: the scheduler leases them
        return await self.records.record_success(r, output, time.monotonic() - started, reporter)

    async def _transcode(
        self,
        work: TranscodeWork,
        r: Rendition,
        reporter: ProgressReporter,
        session: SessionRecorder,
        proxy: SourceProxy,
    ) -> Output | Split:
        profile = preset_profile(work.profile, work.spec or builtin(work.profile))
        container = get_container(work.container)
        source = await readable_source(work.source, work.owner, self.stores, self.media_roots())
        reporter.stage("probing")
        probe = await probe_source(self.access, source, self.settings.probe_timeout)
        if probe is not None:
            await self.records.record_probe(r, probe)
            session.update(probe=msgspec.to_builtins(probe))
        total, estimated = duration_of(probe, work.duration_hint)
        reporter.set_total(total, estimated=estimated)
        refusal = source_refusal(probe, total, estimated, self.settings.max_source_seconds)
        if refusal is not None:
            raise TranscodeFailed(refusal)
        limits = RunLimits(
            stall_seconds=self.settings.stall_seconds,
            max_output_bytes=self.settings.max_output_bytes,
            # a duration the probe found was checked above; any other source is watched
            max_source_seconds=None
            if probe is not None and probe.duration
            else self.settings.max_source_seconds,
        )
        proxied = Proxied(proxy, self.access.ffmpeg_env(proxy))
        plan = plan_of(probe, profile, container)
        split = await self.splitter.split(r, source, probe, plan, profile, reporter, proxy, session)
        if split is not None:
            return split
        scratch = self.scratch_folder()
        scratch.mkdir(parents=True, exist_ok=True)
        out = scratch / f"{r.key}-{r.generation}-{r.attempt}{container.extension}"
        extension = container.extension.lstrip(".")
        choice = await self._pipeline(profile, plan, probe)
        service_key = output_key(r.key, r.generation, r.attempt, extension)
        ref, store, key = await self.output_names.target(
            self.stores, work, r.key, extension, service_key
        )
        while True:
            argv = build_args(
                self.ffmpeg,
                source,
                str(out),
                plan,
                profile,
                container,
                pipeline=choice,
                threads=self.settings.ffmpeg_threads,
                input_options=self.access.ffmpeg_options(source, proxy),
            )
            argv = with_output_limit(argv, self.settings.max_output_bytes)
            session.update(
                pipeline=choice.name, pipeline_reason=choice.reason, argv=scrub_argv(argv)
            )
            log.info(
                "ffmpeg.start",
                mode=plan.mode,
                reasons=plan.reasons,
                total=total,
                pipeline=choice.name,
            )
            reporter.stage("encoding")
            try:
                if container.sequential and store.local_path(key) is None:
                    result, stored = await encode_streaming(
                        argv, out, store, key, reporter, limits, proxied
                    )
                else:
                    result = await encode_to_file(argv, out, reporter, limits, proxied)
                    stored = await store_output(store, key, out)
                break
            except HardwareFailed as exc:
                note_fallback(self.node, choice, exc, session)
                choice = cpu_choice(profile, plan, probe, f"{choice.name} failed: {exc.reason}")
            finally:
                out.unlink(missing_ok=True)
        session.update(stderr_tail=scrub(result.stderr_tail))
        log.info("ffmpeg.done", seconds=round(result.wall_seconds, 2), size=stored.size)
        video = probe.video() if probe else None
        audio = probe.audio() if probe else None
        return Output(
            store=ref,
            blob=stored.key,
            size=stored.size,
            sha256=stored.sha256,
            container=container.name,
            mime=container.mime,
            mode=plan.mode,
            duration=total if not estimated else reporter.latest.out_time or None,
            video=plan.video if video is None else f"{plan.video} {video.codec or '?'}",
            audio=plan.audio if audio is None else f"{plan.audio} {audio.codec or '?'}",
        )

    async def _pipeline(
        self, profile: Profile, plan: Plan, probe: ProbeResult | None
    ) -> PipelineChoice:
        """From what this node found working, its GPU health, the pool's device and the fleet's
        hardware preference."""
        try:
            pool = await self.fleet.pool(self.settings.pool)
            preference = (await self.fleet.transcoding_settings()).hardware_preference
        except Exception as exc:  # the fleet records are advice; the CPU always works
            log.warning("pipeline.settings_unreadable", **describe(exc))
            return cpu_choice(profile, plan, probe, "fleet settings could not be read")
        video = probe.video() if probe else None
        return choose_pipeline(
            self.node.working(),
            video_codec=profile.video_codec,
            source_codec=video.codec if video else None,
            plan_video=plan.video,
            preference=preference,
            allowed=DEVICE_PIPELINES[pool.device if pool else "any"],
        )
