"""What the join of a split rendition reads and records: its stored parts in order with their
exact durations, and the rendition's output as a whole transcode would have recorded it."""

from __future__ import annotations

from services.transcoder.attempt import TranscodeFailed
from services.transcoder.helpers import plan_of
from shared.blobs.store import StoredBlob
from shared.media.profiles import ContainerSpec, Profile
from shared.messages.records import Output, Part, Rendition, RenditionState, Split
from shared.wire import JobError


def stored_parts(
    parts: list[Part], split: Split
) -> tuple[list[tuple[Part, float | None]], Part | None]:
    """The video parts in order with their exact durations (to the next one's start; None for
    the last), and the audio part; a part not stored fails the join (to run again)."""
    videos = [p for p in parts if p.kind == "video"]
    audio = next((p for p in parts if p.kind == "audio"), None)
    wanted = split.segments + (1 if split.audio else 0)
    ready = [p for p in [*videos, audio] if p is not None and p.state is RenditionState.DONE]
    if len(ready) != wanted or len(videos) != split.segments:
        raise TranscodeFailed(
            JobError(
                code="internal_error",
                reason="The join ran before every part of the job was stored.",
                retryable=True,
            )
        )
    durations = [b.start - a.start for a, b in zip(videos, videos[1:], strict=False)]
    return list(zip(videos, [*durations, None], strict=True)), audio


def joined_output(
    ref: str, stored: StoredBlob, r: Rendition, profile: Profile, container: ContainerSpec
) -> Output:
    """The joined file as the rendition's output, described as its whole transcode would be."""
    plan = plan_of(r.probe, profile, container)
    video = r.probe.video() if r.probe else None
    audio = r.probe.audio() if r.probe else None
    return Output(
        store=ref,
        blob=stored.key,
        size=stored.size,
        sha256=stored.sha256,
        container=container.name,
        mime=container.mime,
        mode=plan.mode,
        duration=r.split.seconds if r.split else None,
        video=plan.video if video is None else f"{plan.video} {video.codec or '?'}",
        audio=plan.audio if audio is None else f"{plan.audio} {audio.codec or '?'}",
    )


def blob_of(part: Part) -> str:
    """The stored file of a part that is done."""
    if part.output is None:
        raise TranscodeFailed(
            JobError(
                code="internal_error",
                reason=f"The part {part.name} is done but records no file.",
                retryable=False,
            )
        )
    return part.output.blob
