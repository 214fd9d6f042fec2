"""Server settings groups (`/api/admin/settings`): read by moderators, changed by
administrators, stored in NATS and applied by the running services without a restart.

One system start walks every group: a kill-switched face refuses new jobs with the operator's
reason, a base URL shows in signed URLs, a media root admits local sources and a bad folder is
refused, a dispatch concurrency holds a second job back and a higher one lets it run, a retry
policy's ack wait reaches the scheduler's consumer; the aggregate change is all or nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web

from shared.errors import BadRequest
from shared.nats.consumer import Consumer, RetryPolicy
from shared.settings import DEFAULTS, Killswitch, PathsSettings, SwitchedOff, refuse_if_engaged
from shared.settings.update import apply_sections, path_problems
from tests.harness import (
    ADMIN_PASSWORD,
    ALICE,
    Api,
    Client,
    eventually,
    start_system,
    stop_system,
)
from tests.jellyfin_standin import JellyfinStandIn

# The 20 s clip served at this rate takes several seconds: long enough to look at running jobs.
SLOW = "100000"


def slow_source(jellyfin: JellyfinStandIn, n: int) -> str:
    return jellyfin.stream_url("long_ts", ALICE, kind="live", rate=SLOW, variant=f"settings-{n}")


def message_of(body: Any) -> str:
    return str(body["error"]["message"])


class HookReceiver:
    """A webhook endpoint on loopback that keeps the payloads it is sent."""

    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> HookReceiver:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _hook(self, request: web.Request) -> web.Response:
        self.payloads.append(await request.json())
        return web.json_response({"received": True})

    def job_ids(self) -> list[str]:
        return [p["data"].get("job_id", "") for p in self.payloads]


# ---- the parts that need no NATS ------------------------------------------------------------


def test_a_partial_change_keeps_the_other_fields_and_null_gives_back_the_environments() -> None:
    first = apply_sections(
        DEFAULTS,
        {
            "processing": {"dispatch_concurrency": 3, "retry_attempts": 4},
            "killswitches": {"native": {"engaged": True, "reason": "upgrade"}},
        },
        now=1.0,
    )
    second = apply_sections(
        first,
        {"processing": {"retry_attempts": None}, "killswitches": {"native": {"engaged": False}}},
    )
    assert second.processing.dispatch_concurrency == 3
    assert second.processing.retry_attempts is None
    # a switch's reason stays until it is changed; null puts it back to none
    assert second.killswitches.native == Killswitch(engaged=False, reason="upgrade")
    third = apply_sections(second, {"killswitches": {"native": {"reason": None}}})
    assert third.killswitches.native == Killswitch()


@pytest.mark.parametrize(
    "sections",
    [
        {"processing": {"dispatch_concurrency": 2}, "nonsense": {}},
        {"processing": {"dispatch_concurrency": 0}},
        {"processing": {"unknown_field": 1}},
        {"general": {"base_url": "ftp://example.com"}},
        {"killswitches": {"native": "off"}},
        {"paths": []},
    ],
)
def test_an_unknown_or_malformed_section_is_refused_whole(sections: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        apply_sections(DEFAULTS, sections)


def test_folders_must_exist_and_be_usable(tmp_path: Path) -> None:
    usable = PathsSettings(media_roots=[str(tmp_path)], scratch_dir=str(tmp_path))
    assert path_problems(usable) == []
    missing = path_problems(PathsSettings(media_roots=[str(tmp_path / "gone")]))
    assert len(missing) == 1 and "does not exist" in missing[0]
    assert "absolute" in path_problems(PathsSettings(scratch_dir="relative/dir"))[0]


def test_an_engaged_switch_refuses_with_its_reason() -> None:
    refuse_if_engaged(Killswitch(reason="ignored while off"), "Registration")
    with pytest.raises(SwitchedOff) as refused:
        refuse_if_engaged(Killswitch(engaged=True, reason="spam wave"), "Registration")
    assert refused.value.http_status == 503
    assert "spam wave" in refused.value.message


def test_a_consumer_follows_the_policy_in_force_at_each_message() -> None:
    policy = RetryPolicy()
    consumer: Consumer[Any] = Consumer.durable(
        "S", "c", "s.>", msgspec.json.Decoder(), family="command", ack_wait=30.0, max_attempts=10
    )
    consumer.policy = lambda: policy
    assert consumer.cap_for(object()) == 10 and consumer.retry_delay(3) is None
    policy = RetryPolicy(attempts=3, backoff_seconds=0.5)
    assert consumer.cap_for(object()) == 3
    assert consumer.retry_delay(1) == 0.5 and consumer.retry_delay(3) == 2.0
    uncapped: Consumer[Any] = Consumer.durable(
        "S", "w", "w.>", msgspec.json.Decoder(), family="work", ack_wait=30.0
    )
    uncapped.policy = lambda: policy
    assert uncapped.cap_for(object()) is None  # a consumer without a cap keeps none


# ---- the running system ---------------------------------------------------------------------


async def test_settings_groups_apply_to_the_running_services_without_a_restart(
    env: dict[str, str],
    http: aiohttp.ClientSession,
    jellyfin: JellyfinStandIn,
    clips: dict[str, Path],
) -> None:
    # Given a running system that dispatches two transcodes at once, and no media roots
    tuned = {"MAX_CONCURRENT_JOBS": "2", "VIDMESH_SLOTS": "2"}
    system = await start_system({**env, **tuned, "VIDMESH_OUTBOUND_ALLOW": "127.0.0.0/8"})
    hooks = await HookReceiver().start()
    try:
        anonymous = Api(http, system.url)
        admin = await anonymous.as_user("admin", ADMIN_PASSWORD, register=False)
        ann = await anonymous.as_user("ann")
        alice = Client(http, system.url, ALICE)

        # Every group reads back at once, unset (the environment's values) at first
        everything = await admin.ok("GET", "/api/admin/settings")
        assert set(everything) >= {"general", "paths", "processing", "killswitches", "telemetry"}
        assert everything["processing"]["dispatch_concurrency"] is None
        assert everything["killswitches"]["native"] == {"engaged": False, "reason": ""}
        assert await admin.ok("GET", "/api/admin/settings/general") == everything["general"]
        # and only staff may read them, only administrators change them
        await ann.ok("GET", "/api/admin/settings", 403)
        await ann.ok("PUT", "/api/admin/settings/general", 403, json={"server_name": "x"})

        # Paths: a folder that is not there is refused, and nothing changes
        status, body, _ = await admin.call(
            "PUT", "/api/admin/settings/paths", json={"media_roots": ["/no/such/folder"]}
        )
        assert status == 400 and "/no/such/folder" in message_of(body), body
        await admin.ok("PUT", "/api/admin/settings/paths", 400, json={"scratch_dir": "relative"})
        assert (await admin.ok("GET", "/api/admin/settings/paths"))["media_roots"] is None
        local = str(clips["fits"])
        await ann.ok("POST", "/api/jobs", 400, json={"source": local})
        # a media root that exists admits its files as sources at once
        roots = await admin.ok(
            "PUT", "/api/admin/settings/paths", json={"media_roots": [str(clips["fits"].parent)]}
        )
        assert roots["media_roots"] == [str(clips["fits"].parent)]
        done = await ann.ok("POST", "/api/jobs", 201, json={"source": local})
        await ann.wait_job(done["id"], "completed")

        # General: signed URLs start with the base URL once it is set
        before = await ann.ok("POST", f"/api/jobs/{done['id']}/url")
        assert before["url"].startswith(f"{system.url}/api/files?token=")
        general = await admin.ok(
            "PUT",
            "/api/admin/settings/general",
            json={"server_name": "Media", "base_url": "https://media.example.com/vidmesh"},
        )
        assert general == {"server_name": "Media", "base_url": "https://media.example.com/vidmesh"}
        after = await ann.ok("POST", f"/api/jobs/{done['id']}/url")
        assert after["url"].startswith("https://media.example.com/vidmesh/api/files?token=")
        bad_url = {"base_url": "not a url"}
        await admin.ok("PUT", "/api/admin/settings/general", 400, json=bad_url)

        # Kill switches: each face refuses new jobs with the operator's reason
        switches = await admin.ok(
            "PUT",
            "/api/admin/settings/killswitches",
            json={
                "native": {"engaged": True, "reason": "native maintenance until 15:00"},
                "streamyfin": {"engaged": True, "reason": "app uploads paused"},
                "registration": {"engaged": True, "reason": "closed during the spam wave"},
                "webhooks": {"engaged": True, "reason": "receiver migration"},
            },
        )
        assert switches["native"]["engaged"] and not switches["openencoder"]["engaged"]
        status, body, _ = await ann.call("POST", "/api/jobs", json={"source": local})
        assert status == 503 and "native maintenance until 15:00" in message_of(body), body
        # ... a bulk request as a whole (not 201 with every item refused), the reason in details
        status, body, _ = await ann.call(
            "POST", "/api/jobs/bulk", json={"jobs": [{"source": local}]}
        )
        assert status == 503, body
        assert body["error"]["details"]["reason"] == "native maintenance until 15:00", body
        # ... and no job is queued again either (a restart of a finished one)
        status, body, _ = await ann.call("POST", f"/api/jobs/{done['id']}/restart")
        assert status == 503 and "native maintenance until 15:00" in message_of(body), body
        status, body, _ = await alice.request(
            "POST", "/optimize-version", json={"url": slow_source(jellyfin, 0), "deviceId": "d"}
        )
        assert status == 503 and "app uploads paused" in str(body), body
        status, body, _ = await anonymous.call(
            "POST", "/api/auth/register", json={"username": "carl", "password": "password-123"}
        )
        assert status == 503 and "closed during the spam wave" in message_of(body), body
        # switched on again, the same requests pass
        await admin.ok(
            "PUT",
            "/api/admin/settings/killswitches",
            json={"native": {"engaged": False}, "registration": {"engaged": False}},
        )
        await anonymous.ok(
            "POST", "/api/auth/register", 201, json={"username": "carl", "password": "password-123"}
        )
        # (webhooks stay held: the next job's delivery waits for the switch)
        hook = {"url": hooks.url, "event_types": ["job.accepted"]}
        subscription = await admin.ok("POST", "/api/admin/webhooks", 201, json=hook)

        # Processing: a concurrency of 1 holds the second job back, 2 lets it run
        processing = await admin.ok(
            "PUT",
            "/api/admin/settings/processing",
            json={"dispatch_concurrency": 1, "ack_wait_seconds": 17},
        )
        assert processing["dispatch_concurrency"] == 1 and processing["retry_attempts"] is None
        first = await ann.ok("POST", "/api/jobs", 201, json={"source": slow_source(jellyfin, 1)})
        await ann.wait_job(first["id"], "running")
        second = await ann.ok("POST", "/api/jobs", 201, json={"source": slow_source(jellyfin, 2)})
        # (still waiting after the scheduler has looked at every job twice more)
        passes = system.scheduler.passes
        await eventually(lambda: system.scheduler.passes >= passes + 2, what="two more passes")
        assert (await ann.ok("GET", f"/api/jobs/{second['id']}"))["status"] == "queued"
        await admin.ok("PUT", "/api/admin/settings/processing", json={"dispatch_concurrency": 2})
        await ann.wait_job(second["id"], "running")
        for job in (first, second):
            await ann.ok("POST", f"/api/jobs/{job['id']}/cancel")
        # the scheduler's consumer of commands is declared again with the new ack wait
        js = system.nc.jetstream()
        names = system.names

        async def ack_wait() -> bool:
            info = await js.consumer_info(names.commands_stream, names.scheduler_consumer)
            return info.config.ack_wait == 17

        await eventually(ack_wait, what="the scheduler's consumer to take the new ack wait")

        # Webhooks: the held delivery was looked at, not attempted; switched on, it goes out
        async def looked_at() -> bool:
            info = await js.consumer_info(names.webhooks_stream, names.webhook_delivery_consumer)
            return bool(info.num_redelivered >= 1)

        await eventually(looked_at, what="the notifier to hold the delivery")
        deliveries = f"/api/admin/webhooks/{subscription['id']}/deliveries"
        held = [d for d in await admin.ok("GET", deliveries) if d["job_id"] == first["id"]]
        assert held and held[0]["status"] == "pending" and held[0]["attempt_count"] == 0
        assert first["id"] not in hooks.job_ids()
        await admin.ok(
            "PUT", "/api/admin/settings/killswitches", json={"webhooks": {"engaged": False}}
        )
        await eventually(lambda: first["id"] in hooks.job_ids(), what="the held delivery")

        # The aggregate change is all or nothing: one bad section, nothing changes
        status, body, _ = await admin.call(
            "PUT",
            "/api/admin/settings",
            json={
                "general": {"server_name": "Changed"},
                "telemetry": {"interval_seconds": 30},
                "processing": {"retry_attempts": 0},
            },
        )
        assert status == 400 and "processing" in message_of(body), body
        refused = await admin.ok(
            "PUT", "/api/admin/settings", 400, json={"general": {}, "colours": {}}
        )
        assert "telemetry" in refused["error"]["message"], refused  # every group is named
        await admin.ok("PUT", "/api/admin/settings", 400, json={"telemetry": None})
        unchanged = await admin.ok("GET", "/api/admin/settings")
        assert unchanged["general"]["server_name"] == "Media"
        assert (
            unchanged["telemetry"]["interval_seconds"]
            == everything["telemetry"]["interval_seconds"]
        )
        # and a good one changes every group it names
        changed = await admin.ok(
            "PUT",
            "/api/admin/settings",
            json={
                "general": {"server_name": "Changed", "base_url": None},
                "telemetry": {"interval_seconds": 30},
                "killswitches": {"streamyfin": {"engaged": False}},
            },
        )
        assert changed["general"] == {"server_name": "Changed", "base_url": None}
        assert changed["telemetry"]["interval_seconds"] == 30
        assert not changed["killswitches"]["streamyfin"]["engaged"]
        assert changed["paths"]["media_roots"] == [str(clips["fits"].parent)]
        assert await admin.ok("GET", "/api/admin/settings") == changed
    finally:
        await hooks.stop()
        await stop_system(system)
