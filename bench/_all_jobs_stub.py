"""The ceiling for `control_plane.py`: `GET /all-jobs?deviceId=` served by a plain aiohttp app,
in its own process, from a dict of each device's jobs (the answers vidmesh gave, decoded), encoded
on every request as an in-memory server would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from bench._system import REPO, BenchError


def run_stub(answers_file: str) -> None:
    """The child: serve `GET /all-jobs?deviceId=` from a dict of each device's jobs, print its
    port, and run until killed."""
    held: dict[str, list[Any]] = json.loads(Path(answers_file).read_text())

    async def all_jobs(request: web.Request) -> web.Response:
        if not request.headers.get("Authorization"):
            return web.json_response({"error": "unauthorized"}, status=401)
        jobs = held.get(request.query.get("deviceId", ""), [])
        return web.Response(body=msgspec.json.encode(jobs), content_type="application/json")

    async def serve() -> None:
        app = web.Application()
        app.router.add_get("/all-jobs", all_jobs)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(port, flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


@contextlib.asynccontextmanager
async def stub(found: dict[str, bytes], run_dir: Path) -> AsyncIterator[str]:
    """The stub in a child process serving `found` (device -> the answer vidmesh gave); yields
    its base URL."""
    path = run_dir / f"stub-{len(found)}.json"
    path.write_text(json.dumps({device: json.loads(body) for device, body in found.items()}))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench._all_jobs_stub", str(path), stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        if not line.strip().isdigit():
            raise BenchError(f"the stub did not start: {line!r}")
        yield f"http://127.0.0.1:{int(line)}"
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


if __name__ == "__main__":
    run_stub(sys.argv[1])
