"""The job-overhead benchmark's reference: the cached clip, and ffmpeg run directly on it with
the argv the transcoder builds."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg

from bench._system import BenchError
from shared.media import Plan, build_args, get_container, get_profile, make_plan, probe_async
from tests.media_clips import make_clip

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / ".work"
PROFILE = "optimized"  # what `POST /optimize-version` always uses
CONTAINER = "mp4"
WIDTH, HEIGHT, FPS = 1920, 1080, 30


@dataclass(frozen=True)
class Clip:
    """The cached source clip."""

    path: Path
    seconds: float

    def describe(self) -> str:
        size_mb = self.path.stat().st_size / 1e6
        return (
            f"{self.seconds:g} s {WIDTH}x{HEIGHT} {FPS} fps MPEG-4 Part 2 (q 3) + AAC stereo, "
            f"mp4, {size_mb:.1f} MB"
        )


@dataclass
class DirectRun:
    """One direct ffmpeg run."""

    wall_s: float
    output_bytes: int
    load_1m_before: float


# --- the clip ---------------------------------------------------------------------------------


def ensure_clip(seconds: float) -> Clip:
    """The clip for `seconds`, generated once under bench/.work/ and reused afterwards."""
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"clip-{seconds:g}s-{WIDTH}x{HEIGHT}-{FPS}fps-mpeg4-aac.mp4"
    if not path.exists():
        print(f"generating {path.name} (once) ...", flush=True)
        partial = path.with_name(path.name + ".part")
        # mpeg4 is fast to encode and is not h264, so the optimized profile must re-encode it;
        # the later -q:v 3 overrides make_clip's -q:v 5 for a source of realistic quality
        make_clip(
            partial,
            seconds=seconds,
            width=WIDTH,
            height=HEIGHT,
            fps=FPS,
            vcodec="mpeg4",
            acodec="aac",
            channels=2,
            container="mp4",
            extra_args=("-q:v", "3"),
        )
        partial.rename(path)  # only a complete clip is ever cached
    return Clip(path, seconds)


# --- the reference: ffmpeg run directly -------------------------------------------------------


async def plan_for(url: str) -> Plan:
    """The transcoder's plan for `url`; a threaded probe, since the stand-in shares our loop."""
    probe = await probe_async(url)
    plan = make_plan(probe, get_profile(PROFILE), get_container(CONTAINER))
    if plan.video != "encode":
        raise BenchError(f"the clip would not be re-encoded ({'; '.join(plan.reasons)})")
    return plan


def direct_argv(url: str, output: Path, plan: Plan) -> list[str]:
    """The exact argv the transcoder builds for this source (progress pipe included)."""
    return build_args(
        imageio_ffmpeg.get_ffmpeg_exe(),
        url,
        str(output),
        plan,
        get_profile(PROFILE),
        get_container(CONTAINER),
    )


async def warm_up(argv: list[str], output: Path) -> None:
    """An untimed 2 s encode, so the first timed run does not pay for paging ffmpeg in."""
    short = [*argv[:-1], "-t", "2", str(output)]
    await run_direct(short, output)
    await asyncio.to_thread(output.unlink)


async def run_direct(argv: list[str], output: Path) -> DirectRun:
    """Run ffmpeg once and time it; asyncio, so the stand-in keeps serving the source."""
    load = os.getloadavg()[0]  # the machine is shared: a busy start explains a slow run
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,  # the -progress lines; vidmesh parses them, we need not
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise BenchError(f"direct ffmpeg failed ({process.returncode}): {stderr.decode()[-2000:]}")
    stat = await asyncio.to_thread(output.stat)
    return DirectRun(wall_s=wall, output_bytes=stat.st_size, load_1m_before=load)
