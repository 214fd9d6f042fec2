"""Resumable, checksummed downloads: RFC 9110 ranges, 416, HEAD that changes nothing, ETag and
If-Range, and a checksum computed once when the output was stored."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.harness import ALICE, Client, System
from tests.jellyfin_standin import JellyfinStandIn


@pytest_asyncio.fixture
async def finished(
    system: System, alice: Client, jellyfin: JellyfinStandIn
) -> AsyncIterator[tuple[str, bytes]]:
    job_id = await alice.submit(jellyfin.stream_url("hevc", ALICE))
    await alice.wait_status(job_id, "completed", timeout=60)
    status, body, _ = await alice.request("GET", f"/download/{job_id}")
    assert status == 200
    yield job_id, body


@pytest.mark.parametrize(
    "range_header,start,end",
    [("bytes=0-99", 0, 99), ("bytes=100-", 100, None), ("bytes=-50", -50, None)],
    ids=["a-b", "a-", "suffix"],
)
async def test_ranges_answer_206_with_content_range(
    finished: tuple[str, bytes], alice: Client, range_header: str, start: int, end: int | None
) -> None:
    job_id, whole = finished
    status, body, resp = await alice.request(
        "GET", f"/download/{job_id}", headers={"Range": range_header}
    )
    expected = whole[start : None if end is None else end + 1]
    assert status == 206
    assert body == expected
    first = start if start >= 0 else len(whole) + start
    last = first + len(expected) - 1
    assert resp.headers["Content-Range"] == f"bytes {first}-{last}/{len(whole)}"
    assert int(resp.headers["Content-Length"]) == len(expected)
    assert resp.headers["X-File-Size"] == str(len(whole))


async def test_unsatisfiable_range_is_416_with_the_size(
    finished: tuple[str, bytes], alice: Client
) -> None:
    job_id, whole = finished
    status, _, resp = await alice.request(
        "GET", f"/download/{job_id}", headers={"Range": f"bytes={len(whole) + 10}-"}
    )
    assert status == 416
    assert resp.headers["Content-Range"] == f"bytes */{len(whole)}"


async def test_head_gives_the_headers_and_changes_nothing(
    finished: tuple[str, bytes], alice: Client, system: System
) -> None:
    job_id, whole = finished
    for _ in range(3):
        status, body, resp = await alice.request("HEAD", f"/download/{job_id}")
        assert status == 200 and body == b""
        assert int(resp.headers["Content-Length"]) == len(whole)
        assert resp.headers["X-File-Checksum"] == hashlib.sha256(whole).hexdigest()
        assert resp.headers["Accept-Ranges"] == "bytes"
    assert (await alice.job(job_id))["status"] == "completed"
    assert len(system.output_files()) == 1
    status, again, _ = await alice.request("GET", f"/download/{job_id}")
    assert status == 200 and again == whole


async def test_interrupted_download_resumes_with_if_range(
    finished: tuple[str, bytes], alice: Client
) -> None:
    job_id, whole = finished
    status, head, resp = await alice.request(
        "GET", f"/download/{job_id}", headers={"Range": "bytes=0-1023"}
    )
    assert status == 206
    etag = resp.headers["ETag"]
    # Resuming with the same validator gets the rest...
    status, rest, _ = await alice.request(
        "GET", f"/download/{job_id}", headers={"Range": "bytes=1024-", "If-Range": etag}
    )
    assert status == 206 and head + rest == whole
    assert hashlib.sha256(head + rest).hexdigest() == resp.headers["X-File-Checksum"]
    # ...while a stale validator gets the whole, current file.
    status, full, _ = await alice.request(
        "GET", f"/download/{job_id}", headers={"Range": "bytes=1024-", "If-Range": '"stale"'}
    )
    assert status == 200 and full == whole


async def test_checksum_is_not_recomputed_per_request(
    finished: tuple[str, bytes], alice: Client, system: System
) -> None:
    job_id, _ = finished
    # Tamper with the stored file: a per-request hash would follow it, the stored one does not.
    path = system.output_files()[0]
    recorded = (await alice.job(job_id))["checksum"]
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    status, body, resp = await alice.request("HEAD", f"/download/{job_id}")
    assert resp.headers["X-File-Checksum"] == recorded


async def test_download_before_completion_is_refused_clearly(
    system: System, alice: Client, jellyfin: JellyfinStandIn
) -> None:
    url = jellyfin.stream_url("long_ts", ALICE, kind="live", rate="100000")
    job_id = await alice.submit(url)
    status, body, _ = await alice.request("GET", f"/download/{job_id}")
    assert status == 409 and "no output yet" in body["error"]["message"]
    await alice.request("DELETE", f"/cancel-job/{job_id}")
