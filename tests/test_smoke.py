"""Temporary smoke test while building."""

from __future__ import annotations

import hashlib

from tests.conftest import ALICE
from tests.helpers import Client, System
from tests.jellyfin_standin import JellyfinStandIn


async def test_job_completes_and_downloads(
    system: System, alice: Client, jellyfin: JellyfinStandIn
) -> None:
    job_id = await alice.submit(jellyfin.stream_url("fits", ALICE))
    job = await alice.wait_status(job_id, "completed", "failed", timeout=30)
    assert job["status"] == "completed", job
    status, body, resp = await alice.request("GET", f"/download/{job_id}")
    assert status == 200
    assert hashlib.sha256(body).hexdigest() == resp.headers["X-File-Checksum"]
