"""`vidmesh backup` and `vidmesh restore`: JetStream's own snapshots of every stream and bucket,
given back to an empty namespace, bring back jobs, accounts and totals exactly."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from pathlib import Path

import aiohttp
import nats

from shared.nats.subjects import Names
from tests.harness import ALICE, Api, Client, drop_namespace, eventually, start_system, stop_system
from tests.jellyfin_standin import JellyfinStandIn
from vidmesh.backup import CHUNK


async def vidmesh(env: dict[str, str], *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "vidmesh.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


async def download(client: Client, job_id: str) -> tuple[str, str]:
    status, body, resp = await client.request("GET", f"/download/{job_id}")
    assert status == 200, (status, body)
    return hashlib.sha256(body).hexdigest(), resp.headers["X-File-Checksum"]


async def completed_jobs(client: Client) -> int:
    status, stats, _ = await client.request("GET", "/statistics")
    assert status == 200, stats
    return int(stats["completedJobs"])


async def test_a_restored_backup_brings_back_jobs_accounts_and_totals(
    env: dict[str, str], jellyfin: JellyfinStandIn, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # Given a vidmesh with a finished job, counted in the statistics, and a native account
    system = await start_system(env)
    alice = Client(http, system.url, ALICE)
    job_id = await alice.submit(jellyfin.stream_url("fits", ALICE))
    await alice.wait_status(job_id, "completed")
    before = await download(alice, job_id)
    await eventually(lambda: _count_is(alice, 1), what="the job counted")
    await Api(http, system.url).as_user("ann")
    folder = tmp_path / "backup"
    try:
        # When it is backed up while running
        code, said = await vidmesh(env, "backup", str(folder))
        assert code == 0 and "backed up" in said, said
        manifest = json.loads((folder / "manifest.json").read_text())
        streams = {s["stream"] for s in manifest["streams"]}
        assert {system.names.events_stream, f"KV_{system.names.jobs_bucket}"} <= streams

        # Then restoring over the live namespace is refused, naming what is in the way
        code, said = await vidmesh(env, "restore", str(folder))
        assert code == 1 and "exist already" in said and "--replace" in said, said

        # When a job is made after the backup, every service stops and the backup is restored
        later = await alice.submit(jellyfin.stream_url("hevc", ALICE))
        await alice.wait_status(later, "completed", timeout=60)
    finally:
        await system.stop()
        await system.nc.close()
    code, said = await vidmesh(env, "restore", "--replace", str(folder))
    assert code == 0 and "restored" in said, said

    # Then vidmesh starts again as it was at the backup: the job with the same output, the
    # totals and the account; the later job is not there
    system = await start_system(env)
    try:
        alice = Client(http, system.url, ALICE)
        assert (await alice.job(job_id))["status"] == "completed"
        assert await download(alice, job_id) == before
        assert await completed_jobs(alice) == 1
        status, _, _ = await alice.request("GET", f"/job-status/{later}")
        assert status == 404
        await Api(http, system.url).as_user("ann", register=False)
        # ... and it goes on working: a new job completes and is counted once more
        again = await alice.submit(jellyfin.stream_url("hevc", ALICE) + "&again=1")
        await alice.wait_status(again, "completed", timeout=60)
        await eventually(lambda: _count_is(alice, 2), what="the new job counted")
    finally:
        await stop_system(system)


async def _count_is(client: Client, expected: int) -> bool:
    return await completed_jobs(client) == expected


async def test_a_stream_larger_than_a_snapshot_chunk_comes_back_whole(
    env: dict[str, str], tmp_path: Path
) -> None:
    # Given an events stream of ~1 MiB of incompressible events (many snapshot chunks)
    nc = await nats.connect(env["VIDMESH_NATS_URL"])
    names = Names(env["VIDMESH_NAMESPACE"])
    js = nc.jetstream()
    try:
        await js.add_stream(name=names.events_stream, subjects=[names.events_all])
        sent = [os.urandom(4096) for _ in range(256)]
        for n, data in enumerate(sent):
            await js.publish(f"{names.namespace}.evt.storage.e{n}", data)
        folder = tmp_path / "backup"

        # When it is backed up, deleted and restored
        code, said = await vidmesh(env, "backup", str(folder))
        assert code == 0, said
        assert (folder / f"{names.events_stream}.snapshot").stat().st_size > 4 * CHUNK
        await js.delete_stream(names.events_stream)
        code, said = await vidmesh(env, "restore", str(folder))
        assert code == 0, said

        # Then every event is back, in order, byte for byte
        info = await js.stream_info(names.events_stream)
        assert info.state.messages == len(sent)
        for seq in (1, 128, 256):
            assert (await js.get_msg(names.events_stream, seq)).data == sent[seq - 1]
    finally:
        await drop_namespace(nc, names)
        await nc.close()
