"""Segment-parallel encoding: one long job finished by N transcoders at once. Prints the wall time
of one 1080p job that must be re-encoded on 1, 2 (and 4 where the machine has the cores)
transcoders, the speed-up of N over 1 (goals: >= 1.7 at 2, >= 3.0 at 4), the same job encoded
whole (segments off) as the reference, and the segmented output's size against the whole-file
encode's at the same CRF (goal: within 3 %).

Each configuration is a fresh `vidmesh up` (its own transcoder, one slot, pinned to the first
core with VIDMESH_CPUS) plus N-1 more `vidmesh transcoder` processes, each on a core of its own,
with one encoder thread each and the pool's concurrency N (it counts segments). The job goes
through the native API (`POST /api/jobs` with a file under the media root); its time is the job
record's created_at -> finished_at. How many segments ran, and where, is read from
`GET /api/jobs/{id}/sessions`. The ratios are measurements: the exit code is 0 whatever they are.

    python bench/segments.py [--minutes 10] [--transcoders 1,2,4] [--segment-seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._system import BenchError, load, run_bench, up_env, vidmesh_up  # noqa: E402
from tests.harness.logs import log_tail  # noqa: E402
from tests.media_clips import make_clip  # noqa: E402

WORK = REPO / "bench" / ".work"
RESULT_JSON = WORK / "segments.json"
PASSWORD = "bench-segments-admin"
PRESET = "h264-1080p"


def _time(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


async def one_job(base: str, source: Path, timeout: float) -> dict[str, Any]:
    """Submit the job as the administrator and wait for it; the finished job and its sessions."""
    async with aiohttp.ClientSession() as http:
        login = {"username": "admin", "password": PASSWORD}
        async with http.post(f"{base}/api/auth/login", json=login) as r:
            if r.status != 200:
                raise BenchError(f"sign-in answered {r.status}")
            token = (await r.json())["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        body = {"source": str(source), "preset": PRESET}
        async with http.post(f"{base}/api/jobs", json=body, headers=headers) as r:
            if r.status != 201:
                raise BenchError(f"POST /api/jobs answered {r.status}: {await r.text()}")
            job_id = (await r.json())["id"]
        deadline = time.monotonic() + timeout
        while True:
            async with http.get(f"{base}/api/jobs/{job_id}", headers=headers) as r:
                job = await r.json()
            if job["status"] in ("completed", "failed", "cancelled"):
                break
            if time.monotonic() > deadline:
                raise BenchError(f"the job did not finish within {timeout:g} s")
            await asyncio.sleep(1.0)
        if job["status"] != "completed":
            raise BenchError(f"the job ended {job['status']}: {job.get('error')}")
        async with http.get(f"{base}/api/jobs/{job_id}/sessions", headers=headers) as r:
            sessions = [item["session"] for item in await r.json()]
    return {"job": job, "sessions": sessions}


async def configuration(
    name: str, transcoders: int, segment_seconds: float, source: Path, timeout: float
) -> dict[str, Any]:
    """One fresh `vidmesh up` with `transcoders` one-core transcoders; the job's figures."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"segments-{name}-", dir=WORK))
    env = up_env(run_dir / "data", None)
    cores = sorted(os.sched_getaffinity(0))
    env.update(
        VIDMESH_ADMIN_PASSWORD=PASSWORD,
        VIDMESH_MEDIA_ROOTS=str(source.parent),
        MAX_CONCURRENT_JOBS=str(transcoders),
        VIDMESH_SLOTS="1",
        VIDMESH_FFMPEG_THREADS="1",
        VIDMESH_SEGMENT_SECONDS=f"{segment_seconds:g}",
        VIDMESH_SEGMENT_MIN_SECONDS="60",
        VIDMESH_CPUS=str(cores[0]),
    )
    extra: list[asyncio.subprocess.Process] = []
    try:
        async with vidmesh_up(env, run_dir / "up.log") as up:
            nats_url = f"nats://127.0.0.1:{env['VIDMESH_NATS_PORT']}"
            for k in range(1, transcoders):
                log = (run_dir / f"transcoder-{k}.log").open("wb")
                extra.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "vidmesh.cli",
                        "transcoder",
                        env={
                            **env,
                            "VIDMESH_NATS_URL": nats_url,
                            "VIDMESH_CPUS": str(cores[k % len(cores)]),
                        },
                        stdout=log,
                        stderr=log,
                        cwd=REPO,
                    )  # fmt: skip
                )
            started = time.monotonic()
            done = await one_job(up.url, source, timeout)
            wall_clock = time.monotonic() - started
    except BenchError:
        print(log_tail(run_dir / "up.log"), file=sys.stderr)
        raise
    finally:
        for process in extra:
            if process.returncode is None:
                process.terminate()
                await process.wait()
    job, sessions = done["job"], done["sessions"]
    parts = [s for s in sessions if s.get("part")]
    return {
        "name": name,
        "transcoders": transcoders,
        "segment_seconds": segment_seconds,
        "wall_s": _time(job["finished_at"]) - _time(job["created_at"]),
        "client_wall_s": wall_clock,
        "size": job["output"]["size"],
        "segments": sum(1 for s in parts if s["part"].startswith("v")),
        "workers": sorted({s["worker"] for s in parts}),
        "load_1m": load(),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    WORK.mkdir(parents=True, exist_ok=True)
    media = WORK / "segments-media"
    media.mkdir(exist_ok=True)
    seconds = args.minutes * 60
    source = media / f"film-{args.minutes:g}min-1080p.mp4"
    if not source.exists():  # made once (minutes for a long one), then reused
        partial = make_clip(
            source.with_suffix(".partial.mp4"), seconds=seconds, width=1920, height=1080,
            fps=30, vcodec="mpeg4",  # the preset must re-encode it to H.264
        )  # fmt: skip
        partial.rename(source)
    timeout = max(600.0, seconds * 8)
    counts = [int(n) for n in args.transcoders.split(",")]
    cores = len(os.sched_getaffinity(0))
    runs = [await configuration("whole", 1, 0, source, timeout)]
    for n in counts:
        if n > cores:
            print(f"  {n} transcoders: skipped, this machine has {cores} cores")
            continue
        runs.append(await configuration(f"{n}", n, args.segment_seconds, source, timeout))
    whole = runs[0]
    by_n = {r["transcoders"]: r for r in runs[1:]}
    one = by_n.get(1)
    goals = {2: 1.7, 4: 3.0}
    print(f"source: {args.minutes:g} min 1920x1080 30 fps MPEG-4 -> {PRESET} "
          f"(segments of ~{args.segment_seconds:g} s); cores: {cores}")  # fmt: skip
    print(f"  whole-file encode, 1 transcoder:  {whole['wall_s']:8.1f} s   "
          f"{whole['size'] / 1e6:8.1f} MB   load {whole['load_1m']:.2f}")  # fmt: skip
    for n, r in by_n.items():
        speedup = one["wall_s"] / r["wall_s"] if one else float("nan")
        over_whole = whole["wall_s"] / r["wall_s"]
        size_ratio = r["size"] / whole["size"]
        r.update(speedup=speedup, speedup_over_whole=over_whole, size_ratio=size_ratio)
        goal = goals.get(n)
        verdict = ""
        if goal is not None:
            verdict = f"   goal >= {goal}: {'PASS' if speedup >= goal else 'MISS'}"
        print(f"  {n} transcoder(s), {r['segments']} segments on {len(r['workers'])}: "
              f"{r['wall_s']:8.1f} s   speed-up over 1: {speedup:.2f}{verdict}   "
              f"over whole: {over_whole:.2f}   size / whole: {size_ratio:.4f} "
              f"({'PASS' if abs(size_ratio - 1) <= 0.03 else 'MISS'} within 3 %)   "
              f"load {r['load_1m']:.2f}")  # fmt: skip
    results = {"args": vars(args), "cores": cores, "runs": runs}
    RESULT_JSON.write_text(json.dumps(results, indent=2))
    print(f"results: {RESULT_JSON.relative_to(REPO)}")
    return results


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="source length (10)")
    parser.add_argument("--transcoders", default="1,2,4", help="counts to run (1,2,4)")
    parser.add_argument("--segment-seconds", type=float, default=60.0, help="segment length (60)")
    return parser.parse_args()


if __name__ == "__main__":
    run_bench(lambda: main(parse()))
