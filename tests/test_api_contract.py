"""The native API's contract: every route states who may call it and proves it, the OpenAPI
document is served as generated, and a bounded schemathesis run finds no 5xx and no response that
breaks the documented schema."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest_asyncio

from services.gateway.api import API, Access
from services.gateway.openapi import document
from tests.harness import ADMIN_PASSWORD, ALICE, Api, System, start_system, stop_system
from tests.jellyfin_standin import JellyfinStandIn
from tests.kube_standin import KubernetesStandIn

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
_PARAM = re.compile(r"\{(\w+)\}")

SPEC = {"container": "mp4", "video": {"codec": "h264", "speed": "ultrafast"}, "audio": {}}


def sample_bodies(source: str, job_id: str) -> dict[str, Any]:
    """A valid body for every route that takes one, so only access decides the answer."""
    return {
        "create_job": {"source": source},
        "bulk_create": {"jobs": [{"source": source}]},
        "rename_outputs": {"jobs": [{"id": job_id, "filename": "renamed.mp4"}]},
        "metadata": {"source": source},
        "create_preset": {"name": "walk", "spec": SPEC},
        "update_preset": {"name": "walk", "spec": SPEC},
        "create_api_key": {"name": "walk"},
        "change_password": {"current_password": "password-123", "new_password": "password-456"},
        "create_user": {"username": "walker", "password": "password-123"},
        "update_user": {"disabled": False},
        "set_user_password": {"password": "password-789"},
        "cleanup": {},
        "update_webhook": {"url": "https://example.com/hook"},
    }


def fill(path: str, ids: dict[str, str]) -> str:
    return _PARAM.sub(lambda m: ids.get(m.group(1), "unknown-id"), path)


def test_every_api_route_is_declared_with_its_access(system: System) -> None:
    app = system.gateway.app
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith(("/api/", "/user/"))
        and route.method != "HEAD"
    }
    declared = {(op.method, op.path) for op in API.operations}
    assert served == declared
    assert all(isinstance(op.access, Access) and op.summary for op in API.operations)


async def test_every_non_public_route_refuses_anonymous_callers(
    system: System, http: aiohttp.ClientSession
) -> None:
    anonymous = Api(http, system.url)
    bodies = sample_bodies("http://example.com/a.mp4", "x")
    for op in API.operations:
        if op.access in (Access.PUBLIC, Access.SIGNED):
            continue
        status, body, _ = await anonymous.call(
            op.method, fill(op.path, {}), json=bodies.get(op.operation_id)
        )
        assert status == 401, (op.method, op.path, status, body)
        assert body["error"]["code"] == "unauthorized"


async def test_operator_routes_refuse_plain_users(system: System, ben: Api) -> None:
    bodies = sample_bodies("http://example.com/a.mp4", "x")
    for op in API.operations:
        if op.access not in (Access.MODERATOR, Access.ADMIN):
            continue
        status, body, _ = await ben.call(
            op.method, fill(op.path, {}), json=bodies.get(op.operation_id)
        )
        assert status == 403, (op.method, op.path, status, body)


async def test_user_routes_refuse_other_users_objects(
    system: System, ann: Api, ben: Api, jellyfin: JellyfinStandIn
) -> None:
    # Given Ann's job, preset, API key and batch
    source = jellyfin.stream_url("fits", ALICE)
    job = await ann.ok("POST", "/api/jobs", 201, json={"source": source})
    await ann.wait_job(job["id"], "completed")
    preset = await ann.ok("POST", "/api/presets", 201, json={"name": "mine", "spec": SPEC})
    key = await ann.ok("POST", "/api/account/api-keys", 201, json={"name": "k"})
    batch = await ann.ok(
        "POST", "/api/jobs/bulk", 201, json={"jobs": [{"source": source + "&b=1"}], "paused": True}
    )
    ids = {
        "job_id": job["id"],
        "preset_id": preset["id"],
        "key_id": key["id"],
        "batch_id": batch["batch_id"],
    }
    bodies = sample_bodies(source, job["id"])
    # When Ben calls every route that names one of them, he learns nothing and changes nothing
    for op in API.operations:
        names = _PARAM.findall(op.path)
        if op.access is not Access.USER or not names:
            continue
        status, body, _ = await ben.call(
            op.method, fill(op.path, ids), json=bodies.get(op.operation_id)
        )
        assert status == 404, (op.method, op.path, status, body)
    after = await ann.ok("GET", f"/api/jobs/{job['id']}")
    assert after["status"] == "completed" and after["downloaded_at"] is None
    assert (await ann.ok("GET", f"/api/presets/{preset['id']}"))["name"] == "mine"


async def test_the_served_openapi_document_is_the_generated_one(
    system: System, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{system.url}/api/openapi.json") as resp:
        assert resp.status == 200
        served = await resp.json()
    assert served["openapi"] == "3.1.0"
    assert served == document()
    assert served == json.loads((SCHEMAS / "openapi.json").read_text())


@pytest_asyncio.fixture
async def kube_system(env: dict[str, str]) -> AsyncIterator[System]:
    """A system whose gateway scales transcoders through a Kubernetes API (a stand-in)."""
    kube = KubernetesStandIn({}, create_prefix="vidmesh-transcoder-default")
    await kube.start()
    running = await start_system(
        {**env, "VIDMESH_KUBERNETES_API": kube.url, "VIDMESH_KUBERNETES_NAMESPACE": "media"}
    )
    yield running
    await stop_system(running)
    await kube.stop()


async def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    kube_system: System, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Property-based calls of every operation as an administrator (who may call them all),
    bounded to a handful of examples each. The gateway runs as in a cluster (the machines routes
    answer 501 elsewhere, which is what they should do there)."""
    system = kube_system
    admin_api = await Api(http, system.url).as_user("admin", ADMIN_PASSWORD, register=False)
    key = (await admin_api.ok("POST", "/api/account/api-keys", 201, json={"name": "fuzz"}))["key"]
    st = Path(sys.executable).parent / "st"
    command = [
        str(st),
        "run",
        f"{system.url}/api/openapi.json",
        "--checks",
        "not_a_server_error,response_schema_conformance,status_code_conformance",
        "--max-examples",
        "5",
        "--phases",
        "examples,coverage,fuzzing",
        "--workers",
        "2",
        "--request-timeout",
        "20",
        "--seed",
        "7",
        "--no-color",
        "--generation-database",
        "none",
        "-H",
        f"x-api-key: {key}",
        "--exclude-operation-id",
        "change_password",
        # a live event stream answers forever (tests/test_feeds.py covers it)
        "--exclude-operation-id",
        "event_stream",
        "--exclude-operation-id",
        "delete_api_key",
        "--report-dir",
        str(tmp_path),
    ]
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1"},
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=240)
    text = output.decode(errors="replace")
    (tmp_path / "schemathesis.log").write_text(text)
    summary = text[text.find("FAILURES") :] if "FAILURES" in text else text[-4000:]
    assert process.returncode == 0, summary[:8000]
