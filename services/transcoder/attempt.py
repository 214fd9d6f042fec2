"""The pieces of one transcode attempt that need no runner state: its failures, stopping its
helper tasks, storing its output, the CPU fallback of a hardware pipeline, and its duration."""

from __future__ import annotations

from pathlib import Path

import msgspec
import structlog

from shared.blobs.store import BlobStore, StoredBlob
from shared.blobs.users import Stores
from shared.errors import BadRequest, StoreError
from shared.media.pipelines import PipelineChoice, choose_pipeline
from shared.media.plan import Plan
from shared.media.probe import ProbeResult, is_http
from shared.media.profiles import Profile
from shared.sources import check_local_source, is_object_uri, scrub
from shared.wire import JobError

log = structlog.get_logger("vidmesh.transcoder")

# A signed source URL outlives any transcode (S3 allows at most 7 days).
SIGNED_SOURCE_SECONDS = 24 * 3600


class TranscodeFailed(Exception):
    """ffmpeg (or storing its output) failed; carries the classified error."""

    def __init__(self, error: JobError) -> None:
        super().__init__(error.reason)
        self.error = error


class Lost(Exception):
    """The rendition was cancelled or taken over while we ran it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HardwareFailed(Exception):
    """ffmpeg failed in a hardware step (GPU decode, scale or encode), not because of the job."""

    def __init__(self, stderr_tail: str) -> None:
        lines = [line for line in stderr_tail.splitlines() if line.strip()]
        self.reason = scrub(lines[-1] if lines else "hardware step failed")[:300]
        super().__init__(self.reason)
        self.stderr_tail = stderr_tail
        self.sessions_exhausted = "openencodesessionex failed: out of memory" in (
            stderr_tail.lower()
        )


def uses_hardware(argv: list[str]) -> bool:
    return any(arg in ("-hwaccel", "-vaapi_device", "-init_hw_device") for arg in argv) or any(
        arg.endswith(("_nvenc", "_vaapi", "_qsv")) for arg in argv
    )


def cpu_choice(profile: Profile, plan: Plan, probe: ProbeResult | None, why: str) -> PipelineChoice:
    video = probe.video() if probe else None
    choice = choose_pipeline(
        frozenset(),
        video_codec=profile.video_codec,
        source_codec=video.codec if video else None,
        plan_video=plan.video,
        preference="cpu",
    )
    return msgspec.structs.replace(choice, reason=why)


def scrub_argv(argv: list[str]) -> list[str]:
    """The argv with credentials taken out of URLs (a signed source URL among them)."""
    return [scrub(arg) for arg in argv]


def scrub_error(error: JobError) -> JobError:
    """The failure with credentials taken out of URLs its reason or detail quotes (ffmpeg and
    PyAV name the signed URL they could not open)."""
    return msgspec.structs.replace(error, reason=scrub(error.reason), detail=scrub(error.detail))


async def store_output(store: BlobStore, key: str, path: Path) -> StoredBlob:
    try:
        return await store.put_file(key, path)
    except StoreError as exc:
        raise store_failed(exc) from exc


def store_failed(exc: StoreError) -> TranscodeFailed:
    return TranscodeFailed(
        JobError(
            code="store_failed",
            reason=f"The output could not be stored: {exc.message}",
            retryable=exc.retryable_now,
        )
    )


def duration_of(probe: ProbeResult | None, hint: float | None) -> tuple[float | None, bool]:
    """The duration to measure progress against, and whether it is an estimate."""
    if probe is not None and probe.duration:
        return probe.duration, False
    if hint:
        return hint, False
    if probe is not None and probe.size and probe.bit_rate:
        return probe.size * 8 / probe.bit_rate, True
    return None, True


async def readable_source(source: str, owner: str, stores: Stores, media_roots: list[str]) -> str:
    """The source as ffmpeg reads it: a URL as given, an object of `owner`'s through a signed
    URL (never downloaded whole first), a local path only under a configured media root."""
    if is_http(source):
        return source
    try:
        if is_object_uri(source):
            return await stores.object_source(owner, source, SIGNED_SOURCE_SECONDS)
        return check_local_source(source, media_roots, resolve=True)
    except BadRequest as exc:
        raise TranscodeFailed(
            JobError(code="source_refused", reason=exc.message, retryable=False)
        ) from exc
    except StoreError as exc:
        raise TranscodeFailed(
            JobError(code="source_unreachable", reason=exc.message, retryable=exc.retryable_now)
        ) from exc


async def stored_file(store: BlobStore, key: str) -> str:
    """A file of the service's store as ffmpeg reads it: its path, or a signed URL."""
    local = store.local_path(key)
    if local is not None:
        return str(local)
    try:
        url = await store.presign(key, SIGNED_SOURCE_SECONDS)
    except StoreError as exc:
        raise store_failed(exc) from exc
    if url is None:
        reason = "The service's storage cannot sign URLs for ffmpeg to read its parts."
        raise TranscodeFailed(JobError(code="store_failed", reason=reason, retryable=False))
    return url
