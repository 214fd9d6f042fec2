"""GPU pipeline: fps of the GPU-assisted pipeline this node would choose, against CPU-only, for
the same 1080p job, measured in the same run. Also prints the node's GPU health (NVML) and what
its capability probe found, so a run on a GPU machine documents the node.

    python bench/gpu_pipeline.py [--seconds 20] [--preset h264-720p] [--runs 2]

Exit 0 when both pipelines were measured (whatever the ratio); 3 when no GPU pipeline works on
this node (the health and probe are still printed); 2 on other errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from shared.gpu import GpuMonitor  # noqa: E402
from shared.media import (  # noqa: E402
    build_args,
    builtin,
    default_ffmpeg,
    get_container,
    make_plan,
    preset_profile,
    probe_async,
)
from shared.media.capabilities import probe_capabilities  # noqa: E402
from shared.media.pipelines import PipelineChoice, choose_pipeline  # noqa: E402

WORK = REPO / "bench" / ".work"
RESULT_JSON = WORK / "gpu_pipeline.json"


def make_source(ffmpeg: str, seconds: float) -> Path:
    """A cached 1920x1080 30 fps h264 (high bit rate, so every preset re-encodes it) + AAC mp4."""
    path = WORK / f"gpu-source-{seconds:g}s.mp4"
    if path.exists():
        return path
    WORK.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.mp4")
    subprocess.run(
        [
            ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size=1920x1080:rate=30:duration={seconds}",
            "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}",
            "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "20M", "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-b:a", "128k", str(partial),
        ],
        check=True,
    )  # fmt: skip
    partial.rename(path)
    return path


def timed_run(argv: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return wall, done.stdout


async def main(args: argparse.Namespace) -> int:
    ffmpeg = default_ffmpeg()
    monitor = GpuMonitor()
    health = await monitor.read()
    monitor.close()
    print("GPU health (NVML):")
    print(json.dumps(msgspec.to_builtins(health), indent=2)[:4000])
    capabilities = await probe_capabilities(ffmpeg)
    print("\ncapability probe:")
    for check in capabilities.checks:
        mark = "ok  " if check.ok else "FAIL"
        print(f"  {mark} {check.kind:<8} {check.name:<14} {check.reason[:110]}")
    print(f"  pipelines: {capabilities.pipelines()}")

    source = make_source(ffmpeg, args.seconds)
    probe = await probe_async(str(source))
    profile = preset_profile(args.preset, builtin(args.preset))
    container = get_container("mp4")
    plan = make_plan(probe, profile, container)
    video = probe.video()
    choose = dict(
        video_codec=profile.video_codec,
        source_codec=video.codec if video else None,
        plan_video=plan.video,
    )
    gpu = choose_pipeline(capabilities.working(), **choose)  # type: ignore[arg-type]
    cpu = choose_pipeline(frozenset(), preference="cpu", **choose)  # type: ignore[arg-type]
    print(f"\nchosen on this node: {gpu.name} ({gpu.encoder}): {gpu.reason}")
    results: dict[str, Any] = {
        "health": msgspec.to_builtins(health),
        "capabilities": msgspec.to_builtins(capabilities),
        "chosen": msgspec.to_builtins(gpu),
        "frames": round(args.seconds * 30),
    }
    if gpu.name == "cpu":
        RESULT_JSON.write_text(json.dumps(results, indent=2))
        print("no GPU pipeline works on this node: nothing to compare", file=sys.stderr)
        return 3

    walls: dict[str, list[float]] = {"cpu": [], gpu.name: []}
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        for run in range(args.runs):
            for choice in (cpu, gpu):
                out = Path(tmp) / f"{choice.name}-{run}.mp4"
                argv = argv_for(ffmpeg, source, out, plan, profile, container, choice)
                wall, _ = timed_run(argv)
                walls[choice.name].append(wall)
                print(f"  run {run + 1} {choice.name:<6} {wall:7.2f} s")
    frames = results["frames"]
    fps = {name: frames / statistics.median(values) for name, values in walls.items()}
    ratio = fps[gpu.name] / fps["cpu"]
    print(f"\n{args.preset} from 1920x1080 h264, {frames} frames, medians of {args.runs}:")
    print(f"  cpu ({cpu.encoder})        {fps['cpu']:8.1f} fps")
    print(f"  {gpu.name} ({gpu.encoder})  {fps[gpu.name]:8.1f} fps")
    print(f"  ratio {gpu.name} / cpu = {ratio:.2f}")
    results.update(walls=walls, fps=fps, ratio=ratio)
    RESULT_JSON.write_text(json.dumps(results, indent=2))
    print(f"results: {RESULT_JSON.relative_to(REPO)}")
    return 0


def argv_for(
    ffmpeg: str,
    source: Path,
    out: Path,
    plan: Any,
    profile: Any,
    container: Any,
    choice: PipelineChoice,
) -> list[str]:
    argv = build_args(
        ffmpeg, str(source), str(out), plan, profile, container, progress=False, pipeline=choice
    )
    return argv


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="clip length (default 20)")
    parser.add_argument("--preset", default="h264-720p", help="preset (default h264-720p)")
    parser.add_argument("--runs", type=int, default=2, help="runs of each (default 2)")
    return parser.parse_args()


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main(parse())))
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        sys.exit(2)
