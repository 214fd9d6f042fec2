"""Which pipeline an encode runs on at this transcoder, and its fall back to the CPU when the
hardware fails mid-encode.

The choice comes from what this node's capability probe found working (less what failed since
and, while the GPU is unhealthy, every GPU step), the pool's device and the fleet's hardware
preference. A video segment of a split job must be encoded by the split's one CPU encoder, so
that every segment joins by stream copy without a seam: a GPU may decode and scale it (`nvdec`),
never encode it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import msgspec
import structlog

from services.transcoder.attempt import HardwareFailed, cpu_choice
from services.transcoder.node import NodeState
from services.transcoder.sessions import SessionRecorder
from shared.fleet import Fleet
from shared.media.pipelines import HardwarePreference, PipelineChoice, choose_pipeline
from shared.media.plan import Plan
from shared.media.probe import ProbeResult
from shared.media.profiles import Profile
from shared.messages.fleet import DEVICE_PIPELINES
from shared.nats.topology import describe
from shared.sources import scrub

log = structlog.get_logger("vidmesh.transcoder")

T = TypeVar("T")

# Pipelines whose video encoder is the CPU's: the only ones a split job's segments may run on.
CPU_ENCODED: tuple[str, ...] = ("nvdec", "cpu")


def segment_choice(
    working: frozenset[str],
    profile: Profile,
    plan: Plan,
    probe: ProbeResult | None,
    *,
    device: str,
    preference: HardwarePreference,
) -> PipelineChoice:
    """The pipeline for one video segment on a node where the `working` checks pass, in a pool
    of `device`: as for a whole job, among the pipelines that encode with the CPU encoder."""
    allowed = [name for name in DEVICE_PIPELINES[device] if name in CPU_ENCODED]
    choice = _choose(working, profile, plan, probe, preference=preference, allowed=allowed)
    why = f"{choice.reason} (a split job's segments keep its CPU encoder)"
    return msgspec.structs.replace(choice, reason=why)


def _choose(
    working: frozenset[str],
    profile: Profile,
    plan: Plan,
    probe: ProbeResult | None,
    *,
    preference: HardwarePreference,
    allowed: Sequence[str],
) -> PipelineChoice:
    video = probe.video() if probe else None
    return choose_pipeline(
        working,
        video_codec=profile.video_codec,
        source_codec=video.codec if video else None,
        plan_video=plan.video,
        preference=preference,
        allowed=allowed,
    )


class Pipelines:
    """This transcoder's pipeline choices, from its node and its pool's fleet records."""

    def __init__(self, node: NodeState, fleet: Fleet, pool: str) -> None:
        self.node = node
        self.fleet = fleet
        self.pool = pool

    async def for_segment(
        self, profile: Profile, plan: Plan, probe: ProbeResult | None
    ) -> PipelineChoice:
        """The pipeline of a split job's video segment here (see `segment_choice`)."""
        try:
            pool = await self.fleet.pool(self.pool)
            preference = (await self.fleet.transcoding_settings()).hardware_preference
        except Exception as exc:  # the fleet records are advice; the CPU always works
            log.warning("pipeline.settings_unreadable", **describe(exc))
            return cpu_choice(profile, plan, probe, "fleet settings could not be read")
        device = pool.device if pool else "any"
        working = self.node.working()
        return segment_choice(working, profile, plan, probe, device=device, preference=preference)

    async def with_fallback(
        self,
        encode: Callable[[PipelineChoice], Awaitable[T]],
        choice: PipelineChoice,
        fallback: Callable[[str], PipelineChoice],
        session: SessionRecorder,
    ) -> T:
        """`encode` on `choice`; when its hardware fails, again on the CPU pipeline `fallback`
        gives for the reason (`note_fallback`)."""
        while True:
            try:
                return await encode(choice)
            except HardwareFailed as exc:
                note_fallback(self.node, choice, exc, session)
                choice = fallback(f"{choice.name} failed: {exc.reason}")


def note_fallback(
    node: NodeState, choice: PipelineChoice, exc: HardwareFailed, session: SessionRecorder
) -> None:
    """A hardware pipeline failed mid-encode and the work goes on without the GPU: the node
    offers that pipeline no more until re-probed, unless NVENC only ran out of sessions (the
    node is full, not broken); the session records the fallback."""
    if exc.sessions_exhausted:
        node.full_for_now(choice.name, "NVENC has no free session")
    else:
        node.disable(choice.name, exc.reason)
    log.warning("pipeline.fell_back", pipeline=choice.name, reason=exc.reason)
    session.update(fell_back_from=choice.name, stderr_tail=scrub(exc.stderr_tail))
