"""The Streamyfin optimize-server API (seeds/000) as its document gives it, against `vidmesh up`:
every route with the document's bodies and fields read back, errors that carry `message` at the
top level as the original's did, and its own OpenAPI document. Also: no route the gateway serves
is missing from the OpenAPI documents (a guard for routes added later).

tests/test_streamyfin_jobs.py and test_streamyfin_auth.py test the face's behaviour in depth
(in process); this module starts `vidmesh up` once and walks the routes as the app calls them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from services.gateway.api import API
from services.gateway.app import create_app
from services.gateway.config import GatewaySettings
from services.gateway.faces.streamyfin import table as streamyfin
from tests.harness import ALICE, Client, eventually
from tests.harness.up import Up, checkout_up, up_env, without_settings
from tests.jellyfin_standin import JellyfinStandIn

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
# The document's eight routes.
DOCUMENTED = {
    ("POST", "/optimize-version"),
    ("GET", "/download/{id}"),
    ("GET", "/job-status/{id}"),
    ("DELETE", "/cancel-job/{id}"),
    ("POST", "/start-job/{id}"),
    ("GET", "/all-jobs"),
    ("GET", "/statistics"),
    ("DELETE", "/delete-cache"),
}
JOB_FIELDS = {
    "id",
    "status",
    "progress",
    "outputPath",
    "inputUrl",
    "deviceId",
    "itemId",
    "timestamp",
    "size",
    "item",
    "speed",
    "checksum",
}
STATISTICS_FIELDS = {"cacheSize", "totalTranscodes", "activeJobs", "completedJobs", "uniqueDevices"}
# Probes for load balancers and orchestrators, and the Streamyfin face's document: not an API.
# not API routes: the probes, the documents, and the dashboard (its page and modules)
PROBES = {"/", "/healthz", "/readyz", "/openapi-streamyfin.json", "/dashboard/{version}/{name}"}


def test_every_served_route_is_in_an_openapi_document() -> None:
    # Given the gateway's application as it is served on the main port
    app = create_app(GatewaySettings(), None)  # type: ignore[arg-type]  # routing needs no NATS
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    # Then every route but the health probes is in the native or the Streamyfin document
    native = {(op.method, op.path) for op in API.operations}
    face = {(op.method, op.path) for op in streamyfin.OPERATIONS}
    undocumented = {(m, p) for m, p in served - native - face if p not in PROBES}
    assert not undocumented, f"served but in no OpenAPI document: {sorted(undocumented)}"
    assert native.isdisjoint(face)
    # ... the Streamyfin one holds exactly the document's eight routes
    assert face == DOCUMENTED
    # ... and the download-jobs API's storage routes are under its base URL /api too
    for slot in ("s3", "bucket", "gcs", "blob", "oss"):
        assert {("POST", f"/api/user/{slot}"), ("DELETE", f"/api/user/{slot}")} <= native


@pytest_asyncio.fixture(scope="module")
async def up(
    tmp_path_factory: pytest.TempPathFactory, jellyfin: JellyfinStandIn
) -> AsyncIterator[Up]:
    """One `vidmesh up` for the module, with the Jellyfin stand-in."""
    data = tmp_path_factory.mktemp("streamyfin-api") / "data"
    data.mkdir()
    env = up_env(data, jellyfin.url, base=without_settings(os.environ))
    async with checkout_up(env, data.parent / "up.log") as run:
        yield run


@pytest.mark.slow
async def test_the_app_walks_every_route_and_reads_every_documented_field(
    up: Up, http: aiohttp.ClientSession, jellyfin: JellyfinStandIn
) -> None:
    app = Client(http, up.url, ALICE)
    source = jellyfin.stream_url("fits", ALICE, n="walk")
    item = {"Id": "fits", "Name": "Walk", "Type": "Movie", "RunTimeTicks": 20_000_000}
    # POST /optimize-version with the document's body answers 201 {"id"}
    body = {"url": source, "fileExtension": "mp4", "deviceId": "tablet", "itemId": "fits"}
    status, created, _ = await app.request("POST", "/optimize-version", json={**body, "item": item})
    assert status == 201 and set(created) == {"id"}, created
    job_id = created["id"]

    # GET /all-jobs?deviceId= lists it; GET /job-status/:id reads every documented field
    async def completed() -> dict[str, Any] | None:
        status, jobs, _ = await app.request("GET", "/all-jobs?deviceId=tablet")
        assert status == 200 and [j["id"] for j in jobs] == [job_id], jobs
        return jobs[0] if jobs[0]["status"] == "completed" else None

    listed = await eventually(completed, timeout=60, what="the job to complete")
    job = await app.job(job_id)
    assert set(job) >= JOB_FIELDS and job == {**listed, "speed": job["speed"]}
    assert (job["deviceId"], job["itemId"], job["item"]["Name"]) == ("tablet", "fits", "Walk")
    assert job["inputUrl"] == source and job["outputPath"] and job["timestamp"].endswith("Z")
    assert job["progress"] == 100 and job["size"] > 0 and len(job["checksum"]) == 64

    # GET /download/:id: the file, whole or a range, with the document's headers
    status, whole, resp = await app.request("GET", f"/download/{job_id}")
    assert status == 200 and hashlib.sha256(whole).hexdigest() == job["checksum"]
    assert resp.headers["X-File-Checksum"] == job["checksum"]
    assert resp.headers["X-File-Size"] == str(job["size"]) == resp.headers["Content-Length"]
    assert resp.headers["Content-Type"] == "video/mp4"
    assert resp.headers["Accept-Ranges"] == "bytes"
    status, part, resp = await app.request(
        "GET", f"/download/{job_id}", headers={"Range": "bytes=10-"}
    )
    assert status == 206 and part == whole[10:], status
    assert resp.headers["Content-Range"] == f"bytes 10-{len(whole) - 1}/{len(whole)}"

    # POST /start-job/:id of a job that is not queued: the error's message where the app reads it
    status, refused, _ = await app.request("POST", f"/start-job/{job_id}")
    assert status == 409 and refused["message"] == refused["error"]["message"], refused

    # GET /statistics: the document's fields
    status, stats, _ = await app.request("GET", "/statistics")
    assert status == 200 and set(stats) >= STATISTICS_FIELDS, stats
    assert stats["totalTranscodes"] >= 1 and stats["completedJobs"] >= 1
    assert stats["uniqueDevices"] >= 1 and stats["cacheSize"].endswith("B")

    # DELETE /cancel-job/:id: {"message"}; the job leaves the device's list
    status, cancelled, _ = await app.request("DELETE", f"/cancel-job/{job_id}")
    assert status == 200 and cancelled["message"], cancelled
    status, jobs, _ = await app.request("GET", "/all-jobs?deviceId=tablet")
    assert status == 200 and jobs == []

    # DELETE /delete-cache: a success message
    status, deleted, _ = await app.request("DELETE", "/delete-cache")
    assert status in (200, 202) and deleted["message"], deleted


@pytest.mark.slow
async def test_errors_carry_the_message_at_the_top_level_and_the_document_is_served(
    up: Up, http: aiohttp.ClientSession
) -> None:
    app = Client(http, up.url, ALICE)
    nobody = Client(http, up.url, "")
    # 400, 401 and 404, as the document lists them: the envelope, and `message` beside it
    calls: list[tuple[Client, str, str, Any, int]] = [
        (app, "POST", "/optimize-version", {"deviceId": "d"}, 400),
        (nobody, "GET", "/all-jobs", None, 401),
        (nobody, "POST", "/optimize-version", {"url": "http://example.com/a.mp4"}, 401),
        (app, "GET", "/job-status/no-such-job", None, 404),
        (app, "GET", "/download/no-such-job", None, 404),
        (app, "DELETE", "/cancel-job/no-such-job", None, 404),
        (app, "POST", "/start-job/no-such-job", None, 404),
        # a method the route does not take
        (app, "PUT", "/optimize-version", {"url": "http://example.com/a.mp4"}, 405),
        (app, "POST", "/job-status/no-such-job", None, 405),
    ]
    for client, method, path, body, expected in calls:
        status, answer, _ = await client.request(method, path, json=body)
        assert status == expected, (method, path, status, answer)
        assert answer["message"] == answer["error"]["message"] != "", (method, path, answer)
        assert answer["error"]["status"] == expected
    # ... and a 405 says which methods the path takes
    _, _, response = await app.request("PUT", "/optimize-version", json={})
    assert response.headers.get("Allow") == "POST", dict(response.headers)
    # ... while the native API's errors keep the envelope alone
    status, answer, _ = await app.request("GET", "/api/jobs")
    assert status == 401 and set(answer) == {"error"}, answer

    # The face's OpenAPI document is served on the main port, as committed to schemas/
    async with http.get(f"{up.url}/openapi-streamyfin.json") as resp:
        assert resp.status == 200
        served = await resp.json()
    assert served == json.loads((SCHEMAS / "openapi-streamyfin.json").read_text())
    paths = {(m.upper(), p) for p, ops in served["paths"].items() for m in ops}
    assert paths >= DOCUMENTED
    error = served["components"]["schemas"]["ErrorWithMessage"]
    assert set(error["required"]) == {"error", "message"}
