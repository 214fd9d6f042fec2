"""Job overhead: the wall time of one job through vidmesh over the wall time of ffmpeg run directly.

Same clip (a 1080p MPEG-4 Part 2 + AAC mp4 that the "optimized" profile must re-encode), same
ffmpeg argv (built by the code the transcoder uses), same HTTP source (a Jellyfin stand-in in this
process). vidmesh runs as users run it, `vidmesh up`; its time is submit -> downloadable, i.e. the
moment `HEAD /download/{id}` answers 200. Goal: ratio <= 1.05. The ratio is a measurement, so the
exit code is 0 whatever it is; only errors exit non-zero.

    python bench/job_overhead.py [--seconds 60] [--runs 1] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
# bench/ and tests/ are not installed; this reuses the tests' Jellyfin stand-in and clip maker
sys.path.insert(0, str(REPO))

from bench._direct import (  # noqa: E402
    CONTAINER,
    WORK,
    Clip,
    DirectRun,
    direct_argv,
    ensure_clip,
    plan_for,
    run_direct,
    warm_up,
)
from bench._system import (  # noqa: E402
    BenchError,
    cpu_spent,
    process_cpu_seconds,
    read_stages,
    up_env,
    vidmesh_up,
)
from shared.media import (  # noqa: E402
    Plan,
)
from tests.harness.logs import log_tail  # noqa: E402
from tests.jellyfin_standin import JellyfinStandIn  # noqa: E402

RESULT_JSON = WORK / "job_overhead.json"
UP_LOG = WORK / "vidmesh-up.log"
GOAL = 1.05
POLL_INTERVAL = 0.02  # the precision of "downloadable"
# Polling at 50/s all along cost ~2 CPU-s per 30 s job (gateway + this process), taken from the
# ffmpeg being timed on a 2-core machine; while ffmpeg reports a long way to go we poll slower.
POLL_MAX = 0.25


@dataclass
class VidmeshRun:
    """One job through vidmesh: wall time and what the gateway and the transcoder log showed."""

    wall_s: float
    output_bytes: int
    load_1m_before: float
    submitted_at: float  # epoch seconds, to line the run up with the log's timestamps
    status_seen_at_s: dict[str, float] = field(default_factory=dict)
    stages_at_s: dict[str, float] = field(default_factory=dict)
    ffmpeg_in_vidmesh_s: float | None = None
    # CPU seconds each vidmesh process (ffmpeg excluded) and this process spent during the job:
    # on a small machine they are taken from ffmpeg, whatever the clock says
    service_cpu_s: dict[str, float] = field(default_factory=dict)
    bench_cpu_s: float = 0.0


# --- one job through the Streamyfin API --------------------------------------------------------


async def run_through_vidmesh(
    session: aiohttp.ClientSession, base: str, url: str, seconds: float, deadline_s: float
) -> VidmeshRun:
    """Submit, poll until downloadable (see `poll_delay`), and time it."""
    # the app polls /all-jobs every 2 s, so its token is always known; warm the auth cache alike
    async with session.get(f"{base}/all-jobs", params={"deviceId": "bench"}) as response:
        await expect(response, 200, "GET /all-jobs")
    body = {
        "url": url,
        "fileExtension": CONTAINER,
        "deviceId": "bench",
        "itemId": "bench",
        "item": {"Id": "bench", "Name": "bench", "RunTimeTicks": int(seconds * 10_000_000)},
    }
    load = os.getloadavg()[0]
    submitted_wall = time.time()
    started = time.perf_counter()
    async with session.post(f"{base}/optimize-version", json=body) as response:
        job_id = str((await expect(response, 201, "POST /optimize-version"))["id"])
    seen, size = await wait_downloadable(session, base, job_id, started, deadline_s)
    wall = time.perf_counter() - started
    return VidmeshRun(
        wall_s=wall,
        output_bytes=size,
        load_1m_before=load,
        submitted_at=submitted_wall,
        status_seen_at_s=seen,
    )


async def wait_downloadable(
    session: aiohttp.ClientSession, base: str, job_id: str, started: float, deadline_s: float
) -> tuple[dict[str, float], int]:
    """When each status was first seen, and the output size, once HEAD /download answers 200."""
    seen: dict[str, float] = {}
    while time.perf_counter() - started < deadline_s:
        async with session.get(f"{base}/job-status/{job_id}") as response:
            job = await expect(response, 200, "GET /job-status")
        status = str(job["status"])
        seen.setdefault(status, round(time.perf_counter() - started, 3))
        if status in ("failed", "cancelled", "ready-for-removal"):
            raise BenchError(f"job {job_id} ended {status}: {job.get('error')}\n{log_tail(UP_LOG)}")
        if status == "completed":
            async with session.head(f"{base}/download/{job_id}") as response:
                if response.status == 200:
                    seen["downloadable"] = round(time.perf_counter() - started, 3)
                    return seen, int(job["size"])
        await asyncio.sleep(poll_delay(job))
    raise BenchError(f"job {job_id} not downloadable after {deadline_s:.0f} s (seen: {seen})")


def poll_delay(job: dict[str, Any]) -> float:
    """POLL_INTERVAL near the end, up to POLL_MAX while the job's ETA is long."""
    eta = job.get("eta")
    if not isinstance(eta, int | float):
        return POLL_INTERVAL  # queued, probing, or storing: the end may be near
    # a twentieth of the ETA; an ETA that is too long delays the measured end by POLL_MAX at most
    return min(POLL_MAX, max(POLL_INTERVAL, eta / 20))


async def expect(response: aiohttp.ClientResponse, status: int, what: str) -> Any:
    """The JSON body, or a BenchError naming the call when the status is not `status`."""
    if response.status != status:
        raise BenchError(f"{what} answered {response.status}: {await response.text()}")
    return await response.json()


# --- orchestration ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def jellyfin_serving(clip: Clip, runs: int) -> AsyncIterator[JellyfinStandIn]:
    """The stand-in, serving the clip as items bench-1..N to users with tokens bench-1..N."""
    standin = JellyfinStandIn()
    for run in range(1, runs + 1):
        # a fresh item per run: same bytes, another rendition, so no run hits an earlier output;
        # a fresh user per run, so no per-user cached-output limit ever holds a job back
        standin.add_media(f"bench-{run}", clip.path)
        standin.add_user(f"bench-{run}", f"bench-user-{run}")
    await standin.start()
    try:
        yield standin
    finally:
        await standin.stop()


@dataclass
class Measurements:
    """Everything `measure` found: the plan ffmpeg carried out and every run's figures."""

    plan: Plan | None = None
    argv: list[str] = field(default_factory=list)
    directs: list[DirectRun] = field(default_factory=list)
    jobs: list[VidmeshRun] = field(default_factory=list)


async def measure(clip: Clip, runs: int, run_dir: Path) -> Measurements:
    """Interleave direct and vidmesh runs, direct first, against one `vidmesh up`."""
    found = Measurements()
    directs, jobs = found.directs, found.jobs
    log_marks: list[int] = []  # where each job's log lines begin
    async with jellyfin_serving(clip, runs) as standin:
        env = up_env(run_dir / "data", standin.url)
        async with vidmesh_up(env, UP_LOG) as up:
            for run in range(1, runs + 1):
                token = f"bench-{run}"
                url = standin.stream_url(f"bench-{run}", token)
                output = run_dir / f"direct-{run}.mp4"
                found.plan = await plan_for(url)
                found.argv = argv = direct_argv(url, output, found.plan)
                if run == 1:
                    await warm_up(argv, output)
                directs.append(await run_direct(argv, output))
                print(f"run {run}: direct ffmpeg {directs[-1].wall_s:.3f} s", flush=True)
                # generous: the job may be slower than ffmpeg, but not ten times slower
                deadline = 10 * directs[-1].wall_s + 120
                headers = {"Authorization": token}
                log_marks.append((await asyncio.to_thread(UP_LOG.stat)).st_size)
                cpu_before = await asyncio.to_thread(process_cpu_seconds, up.pid)
                bench_before = time.process_time()
                async with aiohttp.ClientSession(headers=headers) as session:
                    jobs.append(
                        await run_through_vidmesh(session, up.url, url, clip.seconds, deadline)
                    )
                jobs[-1].bench_cpu_s = round(time.process_time() - bench_before, 2)
                cpu_after = await asyncio.to_thread(process_cpu_seconds, up.pid)
                jobs[-1].service_cpu_s = cpu_spent(cpu_before, cpu_after)
                print(f"run {run}: vidmesh job   {jobs[-1].wall_s:.3f} s", flush=True)
    # read only now: the transcoder may log a stage just after the job became downloadable,
    # and once `vidmesh up` has stopped every line is written
    log_marks.append((await asyncio.to_thread(UP_LOG.stat)).st_size)
    for job, start, end in zip(jobs, log_marks, log_marks[1:], strict=False):
        job.stages_at_s, job.ffmpeg_in_vidmesh_s = read_stages(UP_LOG, start, end, job.submitted_at)
    return found


def summarize(clip: Clip, found: Measurements) -> dict[str, Any]:
    """The figures the report prints and the JSON file holds."""
    directs, jobs, plan = found.directs, found.jobs, found.plan
    assert plan is not None  # measure() plans before its first run
    direct = statistics.median(d.wall_s for d in directs)
    vidmesh = statistics.median(j.wall_s for j in jobs)
    ratio = vidmesh / direct
    return {
        "clip": clip.describe(),
        "plan": f"video {plan.video}, audio {plan.audio} ({'; '.join(plan.reasons)})",
        "runs": len(jobs),
        "direct_ffmpeg_s": round(direct, 3),
        "vidmesh_job_s": round(vidmesh, 3),
        "overhead_s": round(vidmesh - direct, 3),
        "ratio": round(ratio, 3),
        "goal": GOAL,
        "pass": ratio <= GOAL,
        "cpus": os.cpu_count(),
        "ffmpeg_argv": found.argv,
        "direct_runs": [asdict(d) for d in directs],
        "vidmesh_runs": [asdict(j) for j in jobs],
    }


def print_report(result: dict[str, Any]) -> None:
    verdict = "PASS" if result["pass"] else "FAIL"
    print()
    print("vidmesh job overhead (submit -> downloadable) vs ffmpeg run directly")
    print(f"  clip            {result['clip']}")
    print(f"  ffmpeg plan     {result['plan']}")
    runs, cpus = result["runs"], result["cpus"]
    print(f"  runs            {runs} of each, interleaved, medians reported ({cpus} CPUs)")
    print(f"  direct ffmpeg   {result['direct_ffmpeg_s']:.3f} s")
    print(f"  vidmesh job     {result['vidmesh_job_s']:.3f} s")
    print(f"  overhead        {result['overhead_s']:+.3f} s")
    print(f"  ratio           {result['ratio']:.3f}   goal <= {GOAL}   {verdict}")
    for run, (d, j) in enumerate(
        zip(result["direct_runs"], result["vidmesh_runs"], strict=True), 1
    ):
        print(
            f"  run {run}: direct {d['wall_s']:.3f} s ({d['output_bytes']} B, "
            f"load {d['load_1m_before']:.2f}), vidmesh {j['wall_s']:.3f} s "
            f"({j['output_bytes']} B, load {j['load_1m_before']:.2f}), "
            f"ffmpeg inside vidmesh {j['ffmpeg_in_vidmesh_s']} s"
        )
        print(f"         statuses first seen at {j['status_seen_at_s']}")
        print(f"         transcoder stages at   {j['stages_at_s']}")
        print(
            f"         CPU s beside ffmpeg    {j['service_cpu_s']}, this process {j['bench_cpu_s']}"
        )
    print(f"  JSON            {RESULT_JSON.relative_to(REPO)}")


async def bench(seconds: float, runs: int, keep: bool) -> dict[str, Any]:
    clip = await asyncio.to_thread(ensure_clip, seconds)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=WORK))
    try:
        found = await measure(clip, runs, run_dir)
    finally:
        if keep:
            print(f"kept {run_dir} and {UP_LOG}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    return summarize(clip, found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="clip length (default 60)")
    parser.add_argument("--runs", type=int, default=1, help="runs of each, interleaved")
    parser.add_argument("--keep", action="store_true", help="keep the data dir and outputs")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.seconds <= 0:
        parser.error("--runs must be >= 1 and --seconds > 0")
    try:
        result = asyncio.run(bench(args.seconds, args.runs, args.keep))
    except BenchError as exc:
        print(f"job_overhead: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    RESULT_JSON.write_text(json.dumps(result, indent=2) + "\n")
    print_report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
