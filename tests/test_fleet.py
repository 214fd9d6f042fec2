"""The fleet as operators see it: live transcoders with GPU health and capabilities, pools, the
fleet-wide settings, capability re-probes and the system status."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from services.transcoder.node import NodeState
from shared.media import default_ffmpeg
from shared.media.capabilities import CapabilityCache, CapabilityCheck
from tests.harness import (
    ADMIN_PASSWORD,
    ALICE,
    Api,
    System,
    build_service,
    eventually,
    start_system,
    stop_system,
)
from tests.jellyfin_standin import JellyfinStandIn
from tests.kube_standin import KubernetesStandIn


async def _live(admin_api: Api) -> dict[str, Any]:
    """The system status once every transcoder finished its capability probe."""

    async def ready() -> dict[str, Any] | None:
        status = await admin_api.ok("GET", "/api/admin/system/status")
        ok = status["transcoders"] and status["capabilities_ready"] == status["transcoders"]
        return status if ok else None

    return await eventually(ready, timeout=60)


async def test_a_cpu_node_reports_no_gpu_as_a_normal_state_and_offers_the_cpu_pipeline(
    system: System, admin_api: Api
) -> None:
    status = await _live(admin_api)
    assert status["status"] == "ok", status
    assert status["pipelines"].get("cpu") == status["transcoders"]
    assert status["ffmpeg_versions"] and status["problems"] == []
    gpus = await admin_api.ok("GET", "/api/admin/transcoding/gpus")
    assert gpus["gpus"] == []
    assert gpus["nodes"] and all(n["gpu_state"] == "none" for n in gpus["nodes"])
    assert all("driver" in n["gpu_reason"].lower() for n in gpus["nodes"])


async def test_pools_are_created_changed_and_deleted_and_jobs_name_them(
    system: System, admin_api: Api
) -> None:
    pools = await admin_api.ok("GET", "/api/admin/transcoding/pools")
    assert [p["id"] for p in pools] == ["default"]
    assert pools[0]["transcoders"] >= 1 and pools[0]["concurrency"] is None
    created = await admin_api.ok(
        "POST",
        "/api/admin/transcoding/pools",
        201,
        json={"id": "gpu-a", "device": "nvidia", "concurrency": 2},
    )
    assert created["work_subject"].endswith(".work.gpu-a") and created["transcoders"] == 0
    assert (await admin_api.call("POST", "/api/admin/transcoding/pools", json={"id": "gpu-a"}))[
        0
    ] == 409
    for bad in ({"id": "Bad Id"}, {"id": "x", "concurrency": 0}, {"id": "x", "device": "tpu"}):
        status, error, _ = await admin_api.call("POST", "/api/admin/transcoding/pools", json=bad)
        assert status == 400 and error["error"]["code"] == "bad_request", bad
    changed = await admin_api.ok(
        "PUT", "/api/admin/transcoding/pools/gpu-a", json={"enabled": False, "concurrency": 4}
    )
    assert changed["enabled"] is False and changed["concurrency"] == 4
    assert changed["device"] == "nvidia"
    # a job may name an existing pool, and only that
    status, error, _ = await admin_api.call(
        "POST", "/api/jobs", json={"source": "http://example.com/a.mp4", "pool": "nope"}
    )
    assert status == 400 and "gpu-a" in error["error"]["message"]
    job = await admin_api.ok(
        "POST", "/api/jobs", 201, json={"source": "http://example.com/a.mp4", "pool": "gpu-a"}
    )
    assert job["status"] == "queued"
    assert (await admin_api.call("DELETE", "/api/admin/transcoding/pools/default"))[0] == 409
    await admin_api.ok("DELETE", "/api/admin/transcoding/pools/gpu-a", 204)
    assert (await admin_api.call("GET", "/api/admin/transcoding/pools/gpu-a"))[0] == 404


async def test_fleet_settings_change_at_once_and_keep_what_was_not_sent(
    system: System, admin_api: Api
) -> None:
    settings = await admin_api.ok("GET", "/api/admin/transcoding/settings")
    assert settings["hardware_preference"] == "auto" and settings["global_concurrency"] is None
    changed = await admin_api.ok(
        "PUT",
        "/api/admin/transcoding/settings",
        json={"hardware_preference": "cpu", "max_height": 720},
    )
    assert changed["hardware_preference"] == "cpu" and changed["max_height"] == 720
    again = await admin_api.ok(
        "PUT", "/api/admin/transcoding/settings", json={"global_concurrency": 3}
    )
    assert again["hardware_preference"] == "cpu" and again["global_concurrency"] == 3
    cleared = await admin_api.ok(
        "PUT", "/api/admin/transcoding/settings", json={"max_height": None}
    )
    assert cleared["max_height"] is None and cleared["global_concurrency"] == 3
    status, _, _ = await admin_api.call(
        "PUT", "/api/admin/transcoding/settings", json={"hardware_preference": "fast"}
    )
    assert status == 400


async def test_a_pool_reprobe_asks_every_live_transcoder_and_records_why_checks_failed(
    system: System, admin_api: Api
) -> None:
    await _live(admin_api)
    probed = await admin_api.ok("POST", "/api/admin/transcoding/pools/default/probe")
    assert probed["answered"] == probed["expected"] >= 1
    checks = {c["name"]: c for c in probed["results"][0]["capabilities"]["checks"]}
    assert checks["libx264"]["ok"] is True
    assert checks["h264_nvenc"]["ok"] is False and checks["h264_nvenc"]["reason"]
    assert (await admin_api.call("POST", "/api/admin/transcoding/pools/nope/probe"))[0] == 404


async def test_a_session_records_what_ran_and_exports_it_for_a_bug_report(
    system: System, admin_api: Api, jellyfin: JellyfinStandIn
) -> None:
    source = jellyfin.stream_url("hevc", ALICE)
    job = await admin_api.ok("POST", "/api/jobs", 201, json={"source": source})
    assert (await admin_api.wait_job(job["id"], "completed", timeout=60))["status"] == "completed"

    async def finished() -> list[dict[str, Any]] | None:
        found = await admin_api.ok("GET", "/api/admin/transcode-sessions?state=succeeded")
        return [s for s in found if job["id"] in s["jobs"]] or None

    (summary,) = await eventually(finished)
    assert summary["pipeline"] == "cpu" and summary["pool"] == "default"
    detail = await admin_api.ok("GET", f"/api/admin/transcode-sessions/{summary['id']}")
    session = detail["session"]
    argv = session["argv"]
    assert "-i" in argv and argv[-1].endswith(".mp4") and "libx264" in argv
    assert ALICE not in " ".join(argv) and ALICE not in session["source"]  # token scrubbed
    assert session["probe"]["streams"] and session["output"]["sha256"]
    assert "cpu" in session["pipeline_reason"] or "hardware" in session["pipeline_reason"]
    export = await admin_api.ok("GET", f"/api/admin/transcode-sessions/{summary['id']}/export")
    assert export["session"]["id"] == summary["id"] and export["jobs"][0]["id"] == job["id"]
    assert ALICE not in str(export)
    status, _, _ = await admin_api.call(
        "POST", f"/api/admin/transcode-sessions/{summary['id']}/cancel"
    )
    assert status == 409  # it is over
    assert (await admin_api.call("GET", "/api/admin/transcode-sessions/nope"))[0] == 404


async def test_cancelling_a_running_session_cancels_its_jobs(
    system: System, admin_api: Api, jellyfin: JellyfinStandIn
) -> None:
    slow = jellyfin.stream_url("long_ts", ALICE, rate="100000").replace("/stream?", "/live?")
    job = await admin_api.ok("POST", "/api/jobs", 201, json={"source": slow})

    async def running() -> dict[str, Any] | None:
        found = await admin_api.ok("GET", "/api/admin/transcode-sessions?state=running")
        return next((s for s in found if job["id"] in s["jobs"]), None)

    session = await eventually(running, timeout=30)
    await admin_api.ok("POST", f"/api/admin/transcode-sessions/{session['id']}/cancel")
    assert (await admin_api.wait_job(job["id"], "cancelled"))["status"] == "cancelled"

    async def ended() -> dict[str, Any] | None:
        found = await admin_api.ok("GET", f"/api/admin/transcode-sessions/{session['id']}")
        return found if found["session"]["state"] == "cancelled" else None

    await eventually(ended)


async def test_machines_are_the_live_transcoders_and_scaling_needs_kubernetes(
    system: System, admin_api: Api
) -> None:
    machines = await admin_api.ok("GET", "/api/machines")
    assert machines and machines[0]["status"] == "active" and machines[0]["pool"] == "default"
    sizes = await admin_api.ok("GET", "/api/machines/sizes")
    assert sizes[0]["slug"] == "default" and sizes[0]["transcoders"] == len(machines)
    regions = await admin_api.ok("GET", "/api/machines/regions")
    assert regions == [regions[0]] and regions[0]["available"] is False
    for method, path in (
        ("POST", "/api/machines"),
        ("DELETE", "/api/machines"),
        ("DELETE", f"/api/machines/{machines[0]['id']}"),
    ):
        status, error, _ = await admin_api.call(method, path, json={} if method == "POST" else None)
        assert status == 501 and "Kubernetes" in error["error"]["message"], (method, path)


async def test_machines_scale_a_pools_deployment_through_the_kubernetes_api(
    env: dict[str, str], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    kube = KubernetesStandIn(replicas={"vidmesh-transcoder-default": 1})
    await kube.start()
    token = tmp_path / "token"
    token.write_text("sa-token")
    system = await start_system(
        {
            **env,
            "VIDMESH_KUBERNETES_API": kube.url,
            "VIDMESH_KUBERNETES_NAMESPACE": "media",
            "VIDMESH_KUBERNETES_TOKEN_FILE": str(token),
        }
    )
    try:
        admin_api = await Api(http, system.url).as_user("admin", ADMIN_PASSWORD, register=False)
        regions = await admin_api.ok("GET", "/api/machines/regions")
        assert regions[0]["slug"] == "media" and regions[0]["available"] is True
        added = await admin_api.ok("POST", "/api/machines", 202, json={"count": 2})
        assert added["pools"] == {"default": 3} and kube.replicas["vidmesh-transcoder-default"] == 3
        status, _, _ = await admin_api.call("POST", "/api/machines", json={"count": 30})
        assert status == 409  # over VIDMESH_MAX_TRANSCODERS_PER_POOL
        (machine,) = await admin_api.ok("GET", "/api/machines")
        await admin_api.ok("DELETE", f"/api/machines/{machine['id']}", 202)
        assert kube.annotations[machine["name"]] == {
            "controller.kubernetes.io/pod-deletion-cost": "-1000"
        }
        assert kube.replicas["vidmesh-transcoder-default"] == 2
        await admin_api.ok("DELETE", "/api/machines?pool=default", 202)
        assert kube.replicas["vidmesh-transcoder-default"] == 0
        assert kube.tokens == {"Bearer sa-token"}
        status, _, _ = await admin_api.call("POST", "/api/machines", json={"pool": "nope"})
        assert status == 400
    finally:
        await stop_system(system)
        await kube.stop()


async def test_a_pool_gets_work_only_while_enabled_and_its_own_transcoders_run_it(
    system: System, admin_api: Api, jellyfin: JellyfinStandIn
) -> None:
    await admin_api.ok(
        "POST",
        "/api/admin/transcoding/pools",
        201,
        json={"id": "fast", "device": "cpu", "concurrency": 1, "enabled": False},
    )
    fast = build_service("transcoder", system.nc, {**system.env, "VIDMESH_POOL": "fast"})
    await fast.start()
    try:
        job = await admin_api.ok(
            "POST",
            "/api/jobs",
            201,
            json={"source": jellyfin.stream_url("fits", ALICE), "pool": "fast"},
        )
        other = await admin_api.ok(
            "POST", "/api/jobs", 201, json={"source": jellyfin.stream_url("hevc", ALICE)}
        )
        # the default pool runs its job while the disabled pool's job waits
        assert (await admin_api.wait_job(other["id"], "completed", timeout=60))["status"]
        assert (await admin_api.ok("GET", f"/api/jobs/{job['id']}"))["status"] == "queued"
        await admin_api.ok("PUT", "/api/admin/transcoding/pools/fast", json={"enabled": True})
        done = await admin_api.wait_job(job["id"], "completed", timeout=60)
        assert done["status"] == "completed"
        sessions = await admin_api.ok("GET", "/api/admin/transcode-sessions?pool=fast")
        assert [s["jobs"] for s in sessions] == [[job["id"]]]
        assert sessions[0]["worker"] == fast.worker_id  # type: ignore[attr-defined]
    finally:
        await fast.shutdown()


async def test_a_hardware_pipeline_that_fails_mid_job_falls_back_and_is_no_longer_offered(
    env: dict[str, str], http: aiohttp.ClientSession, jellyfin: JellyfinStandIn, tmp_path: Path
) -> None:
    """This node's probe says NVDEC works (as on a node whose GPU broke after probing): the job
    starts on nvdec, ffmpeg fails in the hardware step, the job completes on the CPU, and the
    node stops offering nvdec until it is probed again."""
    caps_file = tmp_path / "capabilities.json"
    cache = CapabilityCache(caps_file, default_ffmpeg(), checks=[("libx264", "encoder")])
    probed = await cache.get()
    claimed = [
        CapabilityCheck(name=name, kind=kind, ok=True)
        for name, kind in (
            ("cuda", "hwaccel"),
            ("cuda:h264", "decoder"),
            ("cuda:hevc", "decoder"),
            ("scale_cuda", "filter"),
        )
    ]
    lying = msgspec.structs.replace(probed, checks=[*probed.checks, *claimed])
    caps_file.write_bytes(msgspec.json.encode(lying))
    system = await start_system({**env, "VIDMESH_CAPABILITIES_FILE": str(caps_file)})
    try:
        admin_api = await Api(http, system.url).as_user("admin", ADMIN_PASSWORD, register=False)
        await _live(admin_api)
        job = await admin_api.ok(
            "POST",
            "/api/jobs",
            201,
            json={"source": jellyfin.stream_url("hevc", ALICE)},  # must be re-encoded
        )
        done = await admin_api.wait_job(job["id"], "completed", "failed", timeout=60)
        assert done["status"] == "completed" and done["attempts"] == 1, done
        (session,) = await admin_api.ok("GET", "/api/admin/transcode-sessions")
        assert session["fell_back_from"] == "nvdec" and session["pipeline"] == "cpu"

        async def not_offered() -> list[dict[str, Any]] | None:
            (machine,) = await admin_api.ok("GET", "/api/machines")
            return None if "nvdec" in machine["pipelines"] else machine["pipelines"]

        assert await eventually(not_offered, timeout=20) == ["cpu"]
    finally:
        await stop_system(system)


async def test_quality_ceilings_cap_new_jobs_at_once(
    system: System, admin_api: Api, jellyfin: JellyfinStandIn
) -> None:
    await admin_api.ok(
        "PUT",
        "/api/admin/transcoding/settings",
        json={"max_video_bitrate_kbps": 500, "max_height": 144},
    )
    job = await admin_api.ok(
        "POST", "/api/jobs", 201, json={"source": jellyfin.stream_url("hevc", ALICE)}
    )
    assert (await admin_api.wait_job(job["id"], "completed", timeout=60))["status"] == "completed"
    (session,) = await admin_api.ok("GET", "/api/admin/transcode-sessions")
    argv = (await admin_api.ok("GET", f"/api/admin/transcode-sessions/{session['id']}"))["session"][
        "argv"
    ]
    assert argv[argv.index("-maxrate") + 1] == "500000"
    assert "144" in argv[argv.index("-vf") + 1]


async def test_nvenc_out_of_sessions_pauses_gpu_encoding_without_a_reprobe(tmp_path: Path) -> None:
    cache = CapabilityCache(tmp_path / "c.json", default_ffmpeg(), checks=[("libx264", "encoder")])
    probed = await cache.get()
    nvenc = CapabilityCheck(name="h264_nvenc", kind="encoder", ok=True)
    (tmp_path / "c.json").write_bytes(
        msgspec.json.encode(msgspec.structs.replace(probed, checks=[*probed.checks, nvenc]))
    )
    node = NodeState(
        CapabilityCache(tmp_path / "c.json", default_ffmpeg()), pool="p", worker_id="w"
    )
    node.capabilities = await node.cache.get()
    assert "h264_nvenc" in node.working()
    node.full_for_now("nvenc", "NVENC has no free session", seconds=30)
    assert "h264_nvenc" not in node.working() and "libx264" in node.working()
    states = {p.name: p for p in node.pipelines()}
    assert states["nvenc"].offered is False and "no free session" in states["nvenc"].reason
    assert states["cpu"].offered is True
    node.full_for_now("nvenc", "NVENC has no free session", seconds=0)
    assert "h264_nvenc" in node.working()  # offered again, no re-probe needed
