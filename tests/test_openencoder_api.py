"""An OpenEncoder client, unchanged, against `vidmesh up`: every route of OpenEncoder's API
document (001_*) on the OpenEncoder port, with the document's bodies, reading back the
document's fields: register and log in, presets (the built-in ones, a user's own, a refused raw
option), a job from a media-root file into the caller's S3 bucket (`s3:///`) that completes,
its list, status, cancel and restart, machines, and the `{"status", "message"}` error shape on
every route (405 and 413 too, ids no route knows, options out of bounds).

One `vidmesh up` serves the whole module (the CI budget is tight)."""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
import pytest_asyncio

from shared.blobs.backends import open_store
from tests.harness import ADMIN_PASSWORD, BUCKET, eventually, free_port
from tests.harness.up import Up, checkout_up, up_env, without_settings
from tests.storage_servers import SeaweedS3

pytestmark = pytest.mark.slow

STATUS_WORDS = {
    "queued",
    "downloading",
    "probing",
    "encoding",
    "uploading",
    "completed",
    "error",
    "cancelled",
}
BUILTINS = [
    "h264_baseline_360p_600",
    "h264_main_480p_1000",
    "h264_main_720p_3000",
    "h264_main_1080p_6000",
    "webm_vp9_720p_3000",
]
# `vidmesh up` runs this checkout's code (`python -m vidmesh.cli` from the repository).
REPO = Path(__file__).resolve().parent.parent
SCHEMAS = REPO / "schemas"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
PUBLIC = {"/api/register", "/api/login"}  # all else needs a token


@dataclass
class Encoder:
    """The OpenEncoder port of one `vidmesh up`, and its main port."""

    up: Up
    url: str
    http: aiohttp.ClientSession
    media: Path

    async def call(
        self, method: str, path: str, token: str = "", json: Any = None, base: str = ""
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.request(
            method, (base or self.url) + path, json=json, headers=headers
        ) as response:
            return response.status, await response.json(content_type=None)

    async def send(self, method: str, path: str, token: str, data: bytes) -> tuple[int, Any]:
        """A raw JSON body, as sent."""
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        async with self.http.request(method, self.url + path, data=data, headers=headers) as r:
            return r.status, await r.json(content_type=None)

    async def ok(self, method: str, path: str, token: str = "", json: Any = None) -> Any:
        status, body = await self.call(method, path, token, json)
        assert status == 200, (method, path, status, body)
        return body

    async def refused(
        self, status: int, method: str, path: str, token: str = "", json: Any = None
    ) -> str:
        """The call is refused with `status`, in OpenEncoder's error shape; its message."""
        got, body = await self.call(method, path, token, json)
        assert got == status, (method, path, got, body)
        assert set(body) == {"status", "message"} and body["status"] == status, body
        assert body["message"], body
        return str(body["message"])


@pytest_asyncio.fixture(scope="module")
async def encoder(
    tmp_path_factory: pytest.TempPathFactory, seaweed: SeaweedS3, clips: dict[str, Path]
) -> AsyncIterator[Encoder]:
    root = tmp_path_factory.mktemp("openencoder")
    port = free_port()
    env = up_env(
        root / "data",
        None,
        base=without_settings(os.environ),
        VIDMESH_OPENENCODER_PORT=str(port),
        VIDMESH_REGISTRATION="open",
        VIDMESH_ADMIN_PASSWORD=ADMIN_PASSWORD,
        VIDMESH_MEDIA_ROOTS=str(clips["fits"].parent),
        VIDMESH_OUTBOUND_ALLOW="127.0.0.0/8",  # SeaweedFS listens on loopback
        VIDMESH_PROGRESS_INTERVAL="0.25",
    )
    (root / "data").mkdir()
    async with checkout_up(env, root / "up.log") as up, aiohttp.ClientSession() as http:
        found = Encoder(up=up, url=f"http://127.0.0.1:{port}", http=http, media=clips["fits"])

        async def listening() -> bool:
            try:
                status, _ = await found.call("GET", "/openapi-openencoder.json")
            except aiohttp.ClientError:
                return False
            return status == 200

        await eventually(listening, timeout=30, what="the OpenEncoder port")
        yield found


async def _user(encoder: Encoder, name: str) -> str:
    username = f"{name}-{uuid.uuid4().hex[:6]}@example.com"
    credentials = {"username": username, "password": "baz-baz-baz"}
    registered = await encoder.ok("POST", "/api/register", json=credentials)
    assert registered == {"user": username, "message": "User registered"}
    logged_in = await encoder.ok("POST", "/api/login", json=credentials)
    assert set(logged_in) == {"token"} and logged_in["token"]
    return str(logged_in["token"])


async def test_the_banner_and_the_document_name_every_route(encoder: Encoder) -> None:
    # `vidmesh up` says where the OpenEncoder API is
    assert f"OpenEncoder API  {encoder.url}/api" in encoder.up.log()
    doc = await encoder.ok("GET", "/openapi-openencoder.json")
    assert doc["info"]["title"] == "vidmesh OpenEncoder API"
    routes = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    assert routes >= {
        ("POST", "/api/register"),
        ("POST", "/api/login"),
        ("POST", "/api/jobs"),
        ("POST", "/api/job"),
        ("GET", "/api/jobs"),
        ("GET", "/api/jobs/{job_id}"),
        ("GET", "/api/jobs/{job_id}/status"),
        ("POST", "/api/jobs/{job_id}/cancel"),
        ("POST", "/api/jobs/{job_id}/restart"),
        ("POST", "/api/machines"),
        ("GET", "/api/machines"),
        ("DELETE", "/api/machines/{machine_id}"),
        ("DELETE", "/api/machines"),
        ("DELETE", "/api/machine"),
        ("GET", "/api/machines/regions"),
        ("GET", "/api/machines/sizes"),
        ("POST", "/api/presets"),
        ("GET", "/api/presets"),
        ("GET", "/api/presets/{preset_id}"),
        ("PUT", "/api/presets/{preset_id}"),
        ("POST", "/api/preset/{preset_id}"),
    }, routes
    assert set(doc["components"]["schemas"]["ErrorEnvelope"]["properties"]) == {
        "status",
        "message",
    }
    # schemas/ holds a copy, kept current by `vidmesh schemas --write`
    assert doc == json.loads((SCHEMAS / "openapi-openencoder.json").read_text())
    # the native document stays on the main port, without OpenEncoder's shapes
    status, native = await encoder.call("GET", "/api/openapi.json", base=encoder.up.url)
    assert status == 200 and "/api/job" not in native["paths"]


async def test_errors_read_as_openencoder_errors(encoder: Encoder) -> None:
    await encoder.refused(401, "GET", "/api/jobs")
    await encoder.refused(401, "GET", "/api/jobs", token="not-a-token")
    await encoder.refused(
        401, "POST", "/api/login", json={"username": "nobody@example.com", "password": "x"}
    )
    await encoder.refused(400, "POST", "/api/register", json={"username": "x"})
    await encoder.refused(404, "GET", "/api/no-such-route")
    # The document's own example password ("baz") breaks the account rule of every face: the
    # 400 names the rule
    baz = {"username": f"foo-{uuid.uuid4().hex[:6]}@bar.com", "password": "baz"}
    assert "at least 8 characters" in await encoder.refused(400, "POST", "/api/register", json=baz)
    # Every route of the document answers an unsigned (or bodiless) call in the same shape
    doc = await encoder.ok("GET", "/openapi-openencoder.json")
    for path, operations in doc["paths"].items():
        for method in operations:
            if path == "/openapi-openencoder.json":
                continue
            called = re.sub(r"\{[a-z_]+\}", "1", path)
            await encoder.refused(400 if path in PUBLIC else 401, method.upper(), called)
    await encoder.refused(405, "PATCH", "/api/jobs")
    async with encoder.http.patch(encoder.url + "/api/jobs") as response:  # ... saying what to use
        assert set(response.headers.get("Allow", "").split(",")) >= {"GET", "POST"}, response
    token = await _user(encoder, "errors")
    status, body = await encoder.send("POST", "/api/presets", token, b"{" + b" " * 300_000 + b"}")
    assert status == 413 and set(body) == {"status", "message"} and body["status"] == 413, body
    # Ids no record has: "²" (a digit to str.isdigit(), not to int()) and 5,000 digits (past
    # Python's int-string limit) are unknown ids, not 500s
    for odd in ("%C2%B2", "9" * 5000, "-1", "1.0"):
        await encoder.refused(404, "GET", f"/api/jobs/{odd}", token)
        await encoder.refused(404, "GET", f"/api/jobs/{odd}/status", token)
        await encoder.refused(404, "POST", f"/api/jobs/{odd}/cancel", token)
        await encoder.refused(404, "GET", f"/api/presets/{odd}", token)
        await encoder.refused(404, "PUT", f"/api/presets/{odd}", token, json={"active": False})
        await encoder.refused(404, "POST", f"/api/preset/{odd}", token, json={"active": False})


async def test_presets_built_in_own_and_a_refused_raw_option(encoder: Encoder) -> None:
    token = await _user(encoder, "presets")
    # The five built-in presets, OpenEncoder's names with ids 1-5
    listed = await encoder.ok("GET", "/api/presets", token)
    assert listed["count"] == len(listed["items"]) == 5
    by_id = {item["id"]: item for item in listed["items"]}
    assert [by_id[n]["name"] for n in range(1, 6)] == BUILTINS
    assert [item["id"] for item in listed["items"]] == [5, 4, 3, 2, 1]  # newest first
    one = await encoder.ok("GET", "/api/presets/1", token)
    assert one["status"] == 200
    assert one["preset"]["name"] == one["preset"]["description"] == BUILTINS[0]
    assert one["preset"]["output"] == "h264_baseline_360p_600.mp4"
    assert one["preset"]["active"] is True
    # ... with OpenEncoder's own parameters
    assert json.loads(one["preset"]["data"])["raw"][:4] == [
        "-vf scale=-2:360",
        "-c:v libx264",
        "-profile:v baseline",
        "-level:v 3.0",
    ]
    vp9 = await encoder.ok("GET", "/api/presets/5", token)
    assert vp9["preset"]["output"] == "webm_vp9_720p_3000.webm"

    # A user's own preset, from raw options
    raw = ["-vf scale=-2:240", "-c:v libx264", "-profile:v main", "-level 3.1", "-b:v 500k"]
    raw += ["-maxrate 500k", "-bufsize 1000k", "-g 48", "-pix_fmt yuv420p", "-c:a aac"]
    raw += ["-b:a 64k"]
    body = {
        "name": "preset name",
        "description": "preset description",
        "data": json.dumps({"raw": raw}),
        "active": True,
    }
    created = await encoder.ok("POST", "/api/presets", token, json=body)
    assert isinstance(created["id"], int) and created["id"] > 5, created
    assert {k: created[k] for k in ("name", "description", "active")} == {
        "name": "preset name",
        "description": "preset description",
        "active": True,
    }
    assert created["data"] == body["data"]  # echoed as sent, as the document shows
    pid = created["id"]
    changed = await encoder.ok(
        "PUT", f"/api/presets/{pid}", token, json={**body, "description": "smaller"}
    )
    assert changed["description"] == "smaller" and changed["id"] == pid
    changed = await encoder.ok("POST", f"/api/preset/{pid}", token, json={**body, "active": False})
    assert changed["active"] is False
    detail = await encoder.ok("GET", f"/api/presets/{pid}", token)
    assert detail["preset"]["output"] == "preset name.mp4"
    assert (await encoder.ok("GET", "/api/presets", token))["count"] == 6

    # A raw option off the allow-list is refused, named, and never stored
    evil = {**body, "name": "evil", "data": json.dumps({"raw": ["-c:v libx264", "-i /etc/passwd"]})}
    assert "-i" in await encoder.refused(400, "POST", "/api/presets", token, json=evil)
    filtered = {**body, "name": "evil", "data": json.dumps({"raw": ["-vf movie=/etc/passwd"]})}
    assert "-vf movie=/etc/passwd" in await encoder.refused(
        400, "POST", "/api/presets", token, json=filtered
    )
    # Numbers an option cannot take (Unicode digits, 400 digits) are refused, the option named
    huge = "9" * 400
    for option in ("-g ²", "-r ²", "-crf ²", "-keyint_min ²", "-g 1" + huge, "-vf scale=-2:٣٦٠"):
        odd = {**body, "name": "odd", "data": json.dumps({"raw": ["-c:v libx264", option]})}
        assert option.split()[0] in await encoder.refused(
            400, "POST", "/api/presets", token, json=odd
        )
    for option in ("-b:v", "-b:a", "-maxrate", "-bufsize", "-minrate"):
        odd = {**body, "name": "odd", "data": json.dumps({"raw": [f"{option} {huge}k"]})}
        assert option in await encoder.refused(400, "POST", "/api/presets", token, json=odd)
    assert (await encoder.ok("GET", "/api/presets", token))["count"] == 6
    await encoder.refused(403, "PUT", "/api/presets/1", token, json=body)
    await encoder.refused(404, "GET", "/api/presets/999999", token)


async def test_a_job_from_a_media_root_into_the_callers_bucket_completes(
    encoder: Encoder, seaweed: SeaweedS3, tmp_path: Path
) -> None:
    token = await _user(encoder, "jobs")
    # Given the caller's S3 storage, configured on the main port
    prefix = f"oe-{uuid.uuid4().hex[:8]}"
    storage = {
        "bucket": BUCKET,
        "endpoint": seaweed.endpoint,
        "region": "us-east-1",
        "access_key_id": seaweed.access_key,
        "secret_access_key": seaweed.secret_key,
        "prefix": prefix,
    }
    status, answer = await encoder.call("POST", "/user/s3", token, storage, base=encoder.up.url)
    assert status == 201, answer
    # When a job is created with the document's body (its own spelling, POST /api/job)
    job = {"preset": BUILTINS[0], "source": str(encoder.media), "dest": f"s3:///{prefix}/out/"}
    created = await encoder.ok("POST", "/api/job", token, json=job)
    assert created == {"message": "Job created", "status": 200}
    listed = await encoder.ok("GET", "/api/jobs", token)
    assert listed["count"] == 1, listed
    (item,) = listed["items"]
    assert isinstance(item["id"], int) and item["preset"] == BUILTINS[0]
    assert re.fullmatch(r"[0-9a-v]{20}", item["guid"]) and ISO.match(item["created_date"])
    first = item["id"]
    assert await encoder.ok("GET", f"/api/jobs/{first}", token) == item

    # Then its status moves through OpenEncoder's words to completed
    seen: list[str] = []

    async def completed() -> bool:
        answer = await encoder.ok("GET", f"/api/jobs/{first}/status", token)
        assert answer["status"] == 200 and answer["job_status"] in STATUS_WORDS, answer
        seen.append(answer["job_status"])
        assert answer["job_status"] not in ("error", "cancelled"), (seen, encoder.up.tail())
        return bool(answer["job_status"] == "completed")

    await eventually(completed, timeout=90, what="the job to complete")
    # ... and its output is in the caller's bucket, under the folder `dest` named
    bucket = open_store(seaweed.config(BUCKET))
    stored = [b for b in await bucket.list_blobs(f"{prefix}/") if "/out/" in b.key and b.size]
    assert len(stored) == 1, stored
    # ... encoded as the preset's raw options said: H.264 Baseline at level 3.0, 360p at most
    output = tmp_path / "output.mp4"
    output.write_bytes(
        b"".join([c async for c in bucket.read_range(stored[0].key, 0, stored[0].size)])
    )
    with av.open(str(output)) as container:
        video = container.streams.video[0].codec_context
        assert (video.name, video.profile, video.level) == ("h264", "Constrained Baseline", 30)
        assert video.height <= 360

    # A finished job cannot be cancelled; it can be restarted
    await encoder.refused(409, "POST", f"/api/jobs/{first}/cancel", token)
    assert await encoder.ok("POST", f"/api/jobs/{first}/restart", token) == {"status": 200}
    # While the face's kill switch is engaged, jobs are refused with its reason, and a refused
    # job takes no id (the ids stay gap-free)
    admin = await _admin(encoder)
    switches = "/api/admin/settings/killswitches"
    engage = {"openencoder": {"engaged": True, "reason": "encoders resting"}}
    status, answer = await encoder.call("PUT", switches, admin, engage, base=encoder.up.url)
    assert status == 200, answer
    try:
        refusal = await encoder.refused(503, "POST", "/api/jobs", token, json=job)
        assert "encoders resting" in refusal
    finally:
        release = {"openencoder": {"engaged": False}}
        status, answer = await encoder.call("PUT", switches, admin, release, base=encoder.up.url)
        assert status == 200, answer
    # A second job (POST /api/jobs), cancelled while it waits or runs
    created = await encoder.ok("POST", "/api/jobs", token, json=job)
    assert created == {"message": "Job created", "status": 200}
    listed = await encoder.ok("GET", "/api/jobs", token)
    assert listed["count"] == 2 and listed["items"][1]["id"] == first  # newest first
    second = listed["items"][0]["id"]
    assert second == first + 1
    assert await encoder.ok("POST", f"/api/jobs/{second}/cancel", token) == {"status": 200}
    status_now = await encoder.ok("GET", f"/api/jobs/{second}/status", token)
    assert status_now["job_status"] == "cancelled", status_now
    # Pages of 20: the second page is empty
    assert await encoder.ok("GET", "/api/jobs?page=2", token) == {"count": 2, "items": []}

    # Another user sees none of them; a job whose source is not allowed is refused
    other = await _user(encoder, "other")
    await encoder.refused(404, "GET", f"/api/jobs/{first}", other)
    assert await encoder.ok("GET", "/api/jobs", other) == {"count": 0, "items": []}
    await encoder.refused(
        400, "POST", "/api/jobs", other, json={**job, "source": "s3:///in/movie.mp4"}
    )
    await encoder.refused(404, "POST", "/api/jobs", token, json={**job, "preset": "no-such"})
    await eventually(
        lambda: _finished(encoder, token, first), timeout=60, what="the restarted job to finish"
    )


async def _finished(encoder: Encoder, token: str, job_id: int) -> bool:
    answer = await encoder.ok("GET", f"/api/jobs/{job_id}/status", token)
    return bool(answer["job_status"] == "completed")


async def _admin(encoder: Encoder) -> str:
    credentials = {"username": "admin", "password": ADMIN_PASSWORD}
    return str((await encoder.ok("POST", "/api/login", json=credentials))["token"])


async def test_machines_are_the_fleets_transcoders(encoder: Encoder) -> None:
    admin = await _admin(encoder)
    listed = await encoder.ok("GET", "/api/machines", admin)
    assert listed["machines"], listed
    # Integer ids, like the document's (and every id on this face), the same on every call
    ids = [machine["id"] for machine in listed["machines"]]
    assert all(isinstance(n, int) and not isinstance(n, bool) for n in ids), ids
    assert len(set(ids)) == len(ids)
    again = await encoder.ok("GET", "/api/machines", admin)
    assert [machine["id"] for machine in again["machines"]] == ids
    for machine in listed["machines"]:
        assert machine["tags"] == ["openencoder"] and machine["provider"] == "local"
        assert machine["size_slug"] == "default" and machine["region"] == "local"
        assert ISO.match(machine["created_at"]) and machine["status"] == "active"
    regions = await encoder.ok("GET", "/api/machines/regions", admin)
    assert regions == {
        "regions": [
            {"name": "this machine", "slug": "local", "sizes": ["default"], "available": False}
        ]
    }
    # Outside a cluster no machine can be added: neither the region nor its sizes are available
    sizes = await encoder.ok("GET", "/api/machines/sizes", admin)
    assert sizes == {
        "sizes": [{"slug": "default", "available": False, "price_monthly": 0, "price_hourly": 0}]
    }
    # Outside a cluster, machines cannot be added or removed: a clear 501
    body = {"provider": "digitalocean", "region": "sfo1", "size": "s-1vcpu-1gb", "count": 1}
    assert "Kubernetes" in await encoder.refused(501, "POST", "/api/machines", admin, json=body)
    await encoder.refused(501, "DELETE", "/api/machines", admin)
    await encoder.refused(501, "DELETE", "/api/machine", admin)
    await encoder.refused(501, "DELETE", f"/api/machines/{listed['machines'][0]['id']}", admin)
    # ... and they are the administrator's business
    user = await _user(encoder, "machines")
    await encoder.refused(403, "GET", "/api/machines", user)
