"""VIDMESH_CPUS: a transcoder, and every ffmpeg it runs, stays on the CPUs it is given, so several
transcoders on one machine each get cores of their own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from services.transcoder.config import cpu_list
from tests.harness import (
    ALICE,
    REPO,
    Client,
    ServiceProcess,
    eventually,
    ffmpeg_pids,
    start_system,
    stop_system,
)
from tests.jellyfin_standin import JellyfinStandIn


def allowed_cpus(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no Cpus_allowed_list for {pid}")


def threads_of(pid: int) -> list[int]:
    return [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]


def test_cpu_lists_read_as_linux_writes_them() -> None:
    assert cpu_list("") == frozenset()
    assert cpu_list("0-3,6") == {0, 1, 2, 3, 6}
    assert cpu_list(" 2 , 1-1 ") == {1, 2}
    for bad in ("a", "3-1", "-1", "1-", "0-x"):
        with pytest.raises(ValueError, match="cpus"):
            cpu_list(bad)


def test_a_transcoder_given_cpus_it_may_not_use_says_so_and_stops(env: dict[str, str]) -> None:
    beyond = max(os.sched_getaffinity(0)) + 1
    for cpus, said in ((str(beyond), "may not use"), ("one", "is not a CPU number")):
        done = subprocess.run(
            [sys.executable, "-m", "services.transcoder"],
            env={**os.environ, **env, "VIDMESH_CPUS": cpus},
            cwd=REPO,
            capture_output=True,
            timeout=60,
        )
        assert done.returncode != 0 and said in done.stderr.decode(), done.stderr.decode()


async def test_a_pinned_transcoder_runs_ffmpeg_on_its_cpus_only(
    env: dict[str, str], jellyfin: JellyfinStandIn, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # Given a transcoder process pinned to CPU 0, and a job it is encoding
    system = await start_system(env, "scheduler", "storage", "gateway")
    transcoder = ServiceProcess(
        "transcoder", {**env, "VIDMESH_CPUS": "0"}, tmp_path / "transcoder.log"
    ).start()
    try:
        await eventually(lambda: '"service.ready"' in transcoder.log(), what="the transcoder")
        alice = Client(http, system.url, ALICE)
        slow = jellyfin.stream_url("long_ts", ALICE, kind="live", rate="240000")
        job_id = await alice.submit(slow)
        (ffmpeg,) = await eventually(
            lambda: ffmpeg_pids(env["VIDMESH_DATA_DIR"]), what="ffmpeg to start"
        )
        # Then the transcoder and its ffmpeg (every thread of it) may run on CPU 0 only
        assert transcoder.process is not None
        assert allowed_cpus(transcoder.process.pid) == "0"
        threads = threads_of(ffmpeg)
        assert {allowed_cpus(t) for t in threads} == {"0"}, len(threads)
        await alice.request("DELETE", f"/cancel-job/{job_id}")
    finally:
        transcoder.kill()
        await stop_system(system)
