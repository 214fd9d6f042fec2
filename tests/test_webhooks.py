"""Webhooks as their receivers see them: signed (Standard Webhooks), retried with the same
webhook-id until they succeed, only the events a subscription may see, a test delivery on demand,
endpoints that keep failing disabled, and no delivery lost when the notifier is killed.

The receiver is a real HTTP server on a free port that verifies every signature; the tests allow
the loopback network for it (VIDMESH_OUTBOUND_ALLOW), as an operator would for a local receiver.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest_asyncio
from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError
from structlog.testing import capture_logs

from shared.messages.webhooks import Delivery, DeliveryStatus
from shared.webhooks.store import WebhookStore
from tests.harness import (
    ADMIN_PASSWORD,
    ALICE,
    Api,
    ServiceProcess,
    System,
    build_service,
    eventually,
    free_port,
    start_system,
    stop_system,
)
from tests.jellyfin_standin import JellyfinStandIn

# Quick retries, so that a failing endpoint runs through its schedule in a few seconds.
FAST = {
    "VIDMESH_OUTBOUND_ALLOW": "127.0.0.0/8",
    "VIDMESH_WEBHOOK_RETRY_SCHEDULE": "0.3,0.5,1,1,1,1",
    "VIDMESH_WEBHOOK_RETRY_JITTER": "0",
    "VIDMESH_WEBHOOK_DISABLE_AFTER": "2",
    "VIDMESH_WEBHOOK_TIMEOUT": "3",
}
ACCEPTED = ["job.accepted"]


@dataclass
class Received:
    """One request the receiver got, and what it answered."""

    headers: dict[str, str]
    body: bytes
    status: int
    verified: bool

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


@dataclass
class Receiver:
    """A webhook receiver that checks signatures and fails the first `fail_first` requests
    (or every request while `failing`)."""

    port: int = field(default_factory=free_port)
    secrets: list[str] = field(default_factory=list)
    fail_first: int = 0
    failing: bool = False
    calls: list[Received] = field(default_factory=list)
    runner: web.AppRunner | None = None
    # While set and not released, requests wait before answering (a slow endpoint).
    hold: asyncio.Event | None = None
    waiting: int = 0
    most_waiting: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.hold is not None:
            self.waiting += 1
            self.most_waiting = max(self.most_waiting, self.waiting)
            try:
                await self.hold.wait()
            finally:
                self.waiting -= 1
        headers = {k.lower(): v for k, v in request.headers.items()}
        failing = self.failing or len(self.calls) < self.fail_first
        status = 500 if failing else 200
        self.calls.append(Received(headers, body, status, self._verifies(body, headers)))
        return web.json_response({"received": not failing}, status=status)

    def _verifies(self, body: bytes, headers: dict[str, str]) -> bool:
        for secret in self.secrets:
            try:
                Webhook(secret).verify(body, headers)
            except WebhookVerificationError:
                continue
            return True
        return False

    def of_type(self, kind: str) -> list[Received]:
        return [call for call in self.calls if call.payload["type"] == kind]

    def succeeded(self, kind: str) -> list[Received]:
        return [call for call in self.of_type(kind) if call.status == 200]


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    running = await Receiver().start()
    yield running
    await running.stop()


@pytest_asyncio.fixture
async def system(env: dict[str, str]) -> AsyncIterator[System]:
    """Every service, the notifier included, with quick webhook retries (the `ann`, `ben` and
    `admin_api` fixtures talk to this one)."""
    running = await start_system({**env, **FAST})
    yield running
    await stop_system(running)


async def subscribe(api: Api, receiver: Receiver, prefix: str, **fields: Any) -> dict[str, Any]:
    body = {"url": receiver.url, "event_types": ACCEPTED, **fields}
    created: dict[str, Any] = await api.ok("POST", prefix, 201, json=body)
    receiver.secrets.append(created["secret"])
    return created


async def events_fanned_out(system: System) -> bool:
    """The notifier has handled every event published so far (nothing pending, nothing un-acked)."""
    names = system.names
    info = await system.nc.jetstream().consumer_info(names.events_stream, names.notifier_consumer)
    return info.num_pending == 0 and info.num_ack_pending == 0


async def stored_deliveries(system: System, sub_id: str) -> int:
    """How many deliveries of `sub_id` the deliveries bucket holds."""
    store = await WebhookStore.open(system.nc.jetstream(), system.names)
    return len(await store.deliveries.values(under=sub_id))


async def seed_deliveries(system: System, sub_id: str, count: int) -> list[str]:
    """Store `count` finished deliveries of `sub_id` from an hour ago (alternately succeeded and
    failed, newest first) as the notifier would have; their ids, newest first."""
    store = await WebhookStore.open(system.nc.jetstream(), system.names)
    start = time.time() - 3600
    records = []
    for n in range(count):
        at = start - n
        status = DeliveryStatus.SUCCEEDED if n % 2 == 0 else DeliveryStatus.FAILED
        body = {"type": "job.accepted", "timestamp": "2026-01-01T00:00:00Z", "data": {"n": n}}
        records.append(
            Delivery(
                id=f"{sub_id}.{int(at * 1000):013d}-seed{n:04d}",
                subscription_id=sub_id,
                owner="admin",
                event_type="job.accepted",
                event_id=f"seed-{n}",
                payload=json.dumps(body),
                status=status,
                attempt_count=1,
                created_at=at,
                updated_at=at,
                finished_at=at,
            )
        )
    await asyncio.gather(*(store.deliveries.create(r.id, r) for r in records))
    return [r.id for r in records]


async def delivery_of(api: Api, prefix: str, delivery_id: str, *statuses: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        found: dict[str, Any] = await api.ok("GET", f"{prefix}/deliveries/{delivery_id}")
        return found if found["status"] in statuses else None

    return await eventually(check, timeout=20, what=f"delivery {delivery_id} to be {statuses}")


async def test_deliveries_are_signed_and_retried_with_the_same_id_until_they_succeed(
    system: System, admin_api: Api, ann: Api, receiver: Receiver, jellyfin: JellyfinStandIn
) -> None:
    # Given an operator's subscription to job.accepted, and a receiver that fails twice
    sub = await subscribe(admin_api, receiver, "/api/admin/webhooks", description="ops")
    assert sub["secret"].startswith("whsec_") and sub["enabled"] is True
    receiver.fail_first = 2

    # When a user creates a job
    job = await ann.ok(
        "POST", "/api/jobs", 201, json={"source": jellyfin.stream_url("fits", ALICE)}
    )

    # Then the receiver gets it signed, three times with one webhook-id, the last time with 200
    await eventually(lambda: receiver.succeeded("job.accepted"), what="a successful delivery")
    calls = receiver.of_type("job.accepted")
    assert [c.status for c in calls] == [500, 500, 200]
    assert all(c.verified for c in calls)
    assert len({c.webhook_id for c in calls}) == 1
    payload = calls[-1].payload
    assert payload["data"]["job_id"] == job["id"] and payload["data"]["type"] == "job.accepted"
    assert payload["timestamp"] == payload["data"]["time"]
    # ... and the delivery's history says the same
    found = await delivery_of(admin_api, "/api/admin/webhooks", calls[0].webhook_id, "succeeded")
    assert found["attempt_count"] == 3 and found["webhook_id"] == sub["id"]
    assert [a["status_code"] for a in found["attempts"]] == [500, 500, 200]
    # ... with the request each attempt sent: its URL and headers (the signature, not the secret)
    for sent, call in zip(found["attempts"], calls, strict=True):
        headers = sent["request_headers"]
        assert sent["url"] == receiver.url and headers["webhook-id"] == call.webhook_id
        assert headers["webhook-signature"] == call.headers["webhook-signature"]
        assert headers["webhook-timestamp"] == call.headers["webhook-timestamp"]
        assert headers["User-Agent"] == call.headers["user-agent"]
        assert sub["secret"] not in json.dumps(sent)
    # ... and the subscription counts it among the last 24 hours' successes
    (listed_sub,) = await admin_api.ok("GET", "/api/admin/webhooks")
    assert listed_sub["deliveries_24h"] == {"succeeded": 1, "failed": 0, "pending": 0}
    listed = await admin_api.ok("GET", f"/api/admin/webhooks/{sub['id']}/deliveries")
    assert [d["id"] for d in listed] == [found["id"]]

    # When the receiver is down when the next job comes, and comes back later
    await receiver.stop()
    second = await ann.ok(
        "POST", "/api/jobs", 201, json={"source": jellyfin.stream_url("fits", ALICE) + "&n=2"}
    )

    async def failed_once() -> dict[str, Any] | None:
        page = await admin_api.ok("GET", f"/api/admin/webhooks/{sub['id']}/deliveries")
        pending = [d for d in page if d["job_id"] == second["id"] and d["attempt_count"] >= 1]
        return pending[0] if pending else None

    pending = await eventually(failed_once, what="a failed attempt while the receiver is down")
    assert pending["status"] == "pending" and pending["attempts"][0]["status_code"] is None
    await receiver.start()

    # Then the delivery arrives, with the webhook-id it had from the start
    done = await delivery_of(admin_api, "/api/admin/webhooks", pending["id"], "succeeded")
    arrived = [c for c in receiver.succeeded("job.accepted") if c.webhook_id == pending["id"]]
    assert len(arrived) == 1 and arrived[0].verified
    assert arrived[0].payload["data"]["job_id"] == second["id"] and done["attempt_count"] >= 2


async def test_users_subscribe_to_their_own_jobs_only(
    system: System,
    ann: Api,
    ben: Api,
    admin_api: Api,
    receiver: Receiver,
    jellyfin: JellyfinStandIn,
) -> None:
    # Given Ann's subscription to her jobs' events
    sub = await subscribe(ann, receiver, "/api/webhooks")
    assert sub["scope"] == "owner"

    # When Ben and then Ann create jobs
    source = jellyfin.stream_url("fits", ALICE)
    await ben.ok("POST", "/api/jobs", 201, json={"source": source + "&who=ben"})
    mine = await ann.ok("POST", "/api/jobs", 201, json={"source": source + "&who=ann"})

    # Then Ann's endpoint receives her job's event only
    await eventually(lambda: receiver.succeeded("job.accepted"), what="Ann's job event")
    await eventually(lambda: events_fanned_out(system), what="every event to be fanned out")
    received = receiver.of_type("job.accepted")
    assert [c.payload["data"]["job_id"] for c in received] == [mine["id"]]
    assert received[0].verified

    # ... Ben and the operators' routes cannot see her subscription or its deliveries
    await ben.ok("GET", f"/api/webhooks/{sub['id']}", 404)
    await ben.ok("GET", f"/api/webhooks/deliveries/{received[0].webhook_id}", 404)
    assert await ben.ok("GET", "/api/webhooks") == []
    await admin_api.ok("GET", f"/api/admin/webhooks/{sub['id']}", 404)
    (own,) = await ann.ok("GET", "/api/webhooks")
    assert own["id"] == sub["id"]
    assert own["deliveries_24h"] == {"succeeded": 1, "failed": 0, "pending": 0}

    # ... and a user cannot ask for events that are not about jobs
    status, body, _ = await ann.call(
        "POST", "/api/webhooks", json={"url": receiver.url, "event_types": ["rendition.failed"]}
    )
    assert status == 400 and "rendition.failed" in body["error"]["message"]

    # When Ann deletes her subscription, it goes with its delivery history (204, no body)
    assert await stored_deliveries(system, sub["id"]) == 1
    await ben.ok("DELETE", f"/api/webhooks/{sub['id']}", 404)
    status, body, _ = await ann.call("DELETE", f"/api/webhooks/{sub['id']}")
    assert status == 204 and body in (None, "", b""), body
    assert await ann.ok("GET", "/api/webhooks") == []
    await ann.ok("GET", f"/api/webhooks/deliveries/{received[0].webhook_id}", 404)
    assert await stored_deliveries(system, sub["id"]) == 0


async def test_a_jobs_notify_url_gets_its_events_signed_with_the_secret_shown_once(
    system: System, ann: Api, receiver: Receiver, jellyfin: JellyfinStandIn
) -> None:
    # When a job is created with a notify_url
    source = jellyfin.stream_url("fits", ALICE)
    body = {"source": source, "notify_url": receiver.url}
    job = await ann.ok("POST", "/api/jobs", 201, json=body, headers={"Idempotency-Key": "k1"})
    secret = job["notify_secret"]
    receiver.secrets.append(secret)

    # Then its events reach the URL, signed with that secret, up to completion
    await ann.wait_job(job["id"], "completed")
    await eventually(lambda: receiver.succeeded("job.completed"), what="job.completed")
    kinds = [c.payload["type"] for c in receiver.calls]
    assert kinds[0] == "job.accepted" and "job.started" in kinds
    assert all(c.verified for c in receiver.calls)
    assert {c.payload["data"]["job_id"] for c in receiver.calls} == {job["id"]}

    # ... the secret is never shown again, not even to a retry of the same request
    replay = await ann.ok("POST", "/api/jobs", 201, json=body, headers={"Idempotency-Key": "k1"})
    assert replay["id"] == job["id"] and "notify_secret" not in replay
    assert "notify_secret" not in await ann.ok("GET", f"/api/jobs/{job['id']}")
    (own,) = await ann.ok("GET", "/api/webhooks")
    assert own["scope"] == "job" and own["job_id"] == job["id"] and "secret" not in own

    # ... and a notify_url the outbound policy refuses is refused with the reason
    for url in ("http://10.1.2.3/hook", "http://169.254.169.254/latest/meta-data/"):
        status, answer, _ = await ann.call(
            "POST", "/api/jobs", json={"source": source + "&x=1", "notify_url": url}
        )
        assert status == 400 and answer["error"]["code"] == "outbound_refused", answer
    # ... as is one in a bulk request, which could not show the secret
    status, answer, _ = await ann.call(
        "POST", "/api/jobs/bulk", json={"jobs": [{"source": source, "notify_url": receiver.url}]}
    )
    (item,) = answer["results"]
    assert not item["ok"] and "notify_url" in item["error"]["message"], answer


async def test_the_test_route_sends_a_signed_delivery_and_shows_request_and_response(
    system: System, admin_api: Api, receiver: Receiver
) -> None:
    sub = await subscribe(admin_api, receiver, "/api/admin/webhooks")

    # When an operator tests the subscription
    result = await admin_api.ok("POST", f"/api/admin/webhooks/{sub['id']}/test")

    # Then the receiver got one signed test delivery, and the answer shows both sides of it
    assert result["succeeded"] is True and result["error"] is None
    (call,) = receiver.calls
    assert call.verified and call.payload["type"] == "webhook.test"
    sent = result["request"]
    assert sent["method"] == "POST" and sent["url"] == receiver.url
    assert sent["headers"]["webhook-id"] == call.webhook_id == result["delivery_id"]
    assert sent["headers"]["webhook-signature"] == call.headers["webhook-signature"]
    assert json.loads(sent["body"]) == call.payload
    answer = result["response"]
    assert answer["status"] == 200 and json.loads(answer["body"]) == {"received": True}
    assert answer["headers"]["Content-Type"].startswith("application/json")
    assert answer["duration_ms"] >= 0

    # When the receiver fails, the answer says so with the receiver's status
    receiver.failing = True
    failed = await admin_api.ok("POST", f"/api/admin/webhooks/{sub['id']}/test")
    assert failed["succeeded"] is False and failed["response"]["status"] == 500
    assert failed["error"] == "HTTP 500"
    record = await admin_api.ok("GET", f"/api/admin/webhooks/deliveries/{failed['delivery_id']}")
    assert record["status"] == "failed" and record["event_type"] == "webhook.test"
    assert record["attempts"][0]["request_headers"] == failed["request"]["headers"]

    # Given 250 older deliveries in its history, half of them failed
    older = await seed_deliveries(system, sub["id"], 250)
    newest_first = [result["delivery_id"], failed["delivery_id"], *older]
    newest_first.sort(reverse=True)
    path = f"/api/admin/webhooks/{sub['id']}/deliveries"

    # When the history is read 200 at a time, following the next link
    async def read_all(query: str) -> tuple[list[str], int]:
        ids: list[str] = []
        pages = 0
        following: str | None = f"{path}?{query}"
        while following is not None:
            status, page, response = await admin_api.call("GET", following)
            assert status == 200, page
            ids += [d["id"] for d in page]
            pages += 1
            link = response.links.get("next")
            # an absolute link, on this server (or the general settings' base URL)
            assert link is None or str(link["url"]).startswith(admin_api.base), link
            following = link["url"].path_qs if link else None
        return ids, pages

    # Then it pages past 200, newest first, each delivery once
    assert await read_all("limit=200") == (newest_first, 2)
    # ... also filtered by status (the link keeps the filter)
    failures = [d for d in newest_first if d == failed["delivery_id"] or d in older[1::2]]
    assert await read_all("status=failed&limit=100") == (failures, 2)
    # ... and a cursor that is not one of its deliveries is refused
    status, body, _ = await admin_api.call("GET", path, params={"before": "wh_other.1-x"})
    assert status == 400 and "before" in body["error"]["message"], body

    # When the subscription is deleted, it goes with its delivery history (204, no body)
    status, body, _ = await admin_api.call("DELETE", f"/api/admin/webhooks/{sub['id']}")
    assert status == 204 and body in (None, "", b""), body
    await admin_api.ok("GET", path, 404)
    assert await stored_deliveries(system, sub["id"]) == 0


async def test_event_types_are_listed_with_their_payload_schemas(
    system: System, admin_api: Api, ann: Api
) -> None:
    every = await admin_api.ok("GET", "/api/admin/webhooks/event-types")
    by_type = {t["type"]: t for t in every}
    assert {"job.accepted", "job.completed", "rendition.failed", "webhook.test"} <= set(by_type)
    completed = by_type["job.completed"]
    assert completed["description"] and completed["schema"]["$ref"].endswith("/JobCompleted")
    assert "output" in completed["schema"]["$defs"]["JobCompleted"]["properties"]
    # A user sees the job events only
    own = {t["type"] for t in await ann.ok("GET", "/api/webhooks/event-types")}
    assert "job.completed" in own and not any(t.startswith("rendition.") for t in own)
    # ... and unknown types are refused
    status, body, _ = await admin_api.call(
        "POST",
        "/api/admin/webhooks",
        json={"url": "https://example.com/h", "event_types": ["job.nope"]},
    )
    assert status == 400 and "job.nope" in body["error"]["message"]


async def test_an_endpoint_failing_every_delivery_is_disabled_then_retried_by_hand(
    system: System, admin_api: Api, ann: Api, receiver: Receiver, jellyfin: JellyfinStandIn
) -> None:
    # Given a subscription whose receiver fails everything (disabled after 2 failed deliveries)
    sub = await subscribe(admin_api, receiver, "/api/admin/webhooks", description="ops")
    receiver.failing = True
    source = jellyfin.stream_url("fits", ALICE)

    # When two deliveries fail for good
    with capture_logs() as logs:
        for n in range(2):
            await ann.ok("POST", "/api/jobs", 201, json={"source": f"{source}&n={n}"})

        async def disabled() -> dict[str, Any] | None:
            found: dict[str, Any] = await admin_api.ok("GET", f"/api/admin/webhooks/{sub['id']}")
            return found if not found["enabled"] else None

        # Then the subscription is disabled, saying why, and the notifier says so too (its log
        # line follows the stored change)
        found = await eventually(disabled, timeout=30, what="the subscription to be disabled")
        await eventually(
            lambda: any(
                e["event"] == "webhook.disabled" and e["subscription_id"] == sub["id"] for e in logs
            ),
            what="the notifier's webhook.disabled log line",
        )
    assert "2 deliveries in a row failed" in found["disabled_reason"], found
    assert found["consecutive_failures"] == 2 and found["disabled_at"] is not None
    failed = await admin_api.ok(
        "GET", f"/api/admin/webhooks/{sub['id']}/deliveries", params={"status": "failed"}
    )
    assert len(failed) == 2 and all(d["attempt_count"] == 7 for d in failed)
    recent = {"succeeded": 0, "failed": 2, "pending": 0}
    assert found["deliveries_24h"] == recent
    (listed,) = await admin_api.ok("GET", "/api/admin/webhooks")
    assert listed["deliveries_24h"] == recent

    # ... a disabled subscription's delivery cannot be retried
    status, _, _ = await admin_api.call(
        "POST", f"/api/admin/webhooks/deliveries/{failed[0]['id']}/retry"
    )
    assert status == 409

    # When the endpoint is fixed and the subscription enabled again (PUT with that field only:
    # the others stay as they were), a retry by hand delivers
    receiver.failing = False
    path = f"/api/admin/webhooks/{sub['id']}"
    enabled = await admin_api.ok("PUT", path, json={"enabled": True})
    assert enabled["enabled"] and enabled["disabled_reason"] is None
    assert enabled["url"] == receiver.url and enabled["event_types"] == ACCEPTED
    assert enabled["description"] == "ops" and enabled["consecutive_failures"] == 0
    described = await admin_api.ok("PUT", path, json={"description": "ops, fixed"})
    assert (described["description"], described["enabled"]) == ("ops, fixed", True)
    assert described["event_types"] == ACCEPTED and described["url"] == receiver.url
    status, body, _ = await admin_api.call("PUT", path, json={"secret": "whsec_mine"})
    assert status == 400 and "secret" in body["error"]["message"], body
    queued = await admin_api.ok(
        "POST", f"/api/admin/webhooks/deliveries/{failed[0]['id']}/retry", 202
    )
    assert queued["status"] == "pending"
    done = await delivery_of(admin_api, "/api/admin/webhooks", failed[0]["id"], "succeeded")
    assert done["attempts"][-1]["manual"] is True and done["attempt_count"] == 8
    assert receiver.succeeded("job.accepted")[0].webhook_id == failed[0]["id"]
    again = await admin_api.ok("GET", path)
    assert again["deliveries_24h"] == {"succeeded": 1, "failed": 1, "pending": 0}


async def test_a_slow_endpoint_holds_back_no_other_endpoint(
    env: dict[str, str], http: aiohttp.ClientSession, receiver: Receiver, jellyfin: JellyfinStandIn
) -> None:
    # Given 3 delivery slots, at most 1 per endpoint, and an endpoint that answers only when told
    settings = {
        **env,
        **FAST,
        "VIDMESH_WEBHOOK_CONCURRENCY": "3",
        "VIDMESH_WEBHOOK_ENDPOINT_CONCURRENCY": "1",
        "VIDMESH_WEBHOOK_TIMEOUT": "20",
    }
    system = await start_system(settings)
    slow = await Receiver(hold=asyncio.Event()).start()
    try:
        admin = await Api(http, system.url).as_user("admin", ADMIN_PASSWORD, register=False)
        ann = await admin.as_user("ann")
        await subscribe(admin, slow, "/api/admin/webhooks")
        await subscribe(admin, receiver, "/api/admin/webhooks")

        # When four jobs are created
        source = jellyfin.stream_url("fits", ALICE)
        for n in range(4):
            await ann.ok("POST", "/api/jobs", 201, json={"source": f"{source}&n={n}"})

        # Then the quick endpoint gets all four while the slow one holds a single attempt
        await eventually(
            lambda: len(receiver.succeeded("job.accepted")) == 4, timeout=10, what="4 deliveries"
        )
        assert slow.calls == [] and slow.most_waiting == 1

        # ... and once the slow endpoint answers, it gets all four too, one at a time
        assert slow.hold is not None
        slow.hold.set()
        await eventually(lambda: len(slow.succeeded("job.accepted")) == 4, what="4 slow ones")
        assert slow.most_waiting == 1 and all(c.verified for c in slow.calls)
    finally:
        await slow.stop()
        await stop_system(system)


async def test_waiting_for_a_busy_endpoint_and_retrying_never_reach_the_attempt_cap(
    env: dict[str, str], http: aiohttp.ClientSession, jellyfin: JellyfinStandIn
) -> None:
    # Given work messages capped at 3 deliveries, one attempt at a time per endpoint, and an
    # endpoint that answers only when told, then fails four requests
    settings = {
        **env,
        **FAST,
        "VIDMESH_MESSAGE_ATTEMPTS": "3",
        "VIDMESH_WEBHOOK_ENDPOINT_CONCURRENCY": "1",
        "VIDMESH_WEBHOOK_TIMEOUT": "20",
    }
    system = await start_system(settings)
    endpoint = await Receiver(hold=asyncio.Event(), fail_first=4).start()
    try:
        admin = await Api(http, system.url).as_user("admin", ADMIN_PASSWORD, register=False)
        ann = await admin.as_user("ann")
        await subscribe(admin, endpoint, "/api/admin/webhooks")

        with capture_logs() as logs:
            # When three jobs are created while the endpoint holds its first request,
            source = jellyfin.stream_url("fits", ALICE)
            for n in range(3):
                await ann.ok("POST", "/api/jobs", 201, json={"source": f"{source}&n={n}"})

            # ... and the two deliveries that wait for it have waited six times between them
            def waits() -> int:
                return sum(
                    1
                    for line in logs
                    if line["event"] == "delivery.handled" and line["outcome"] == "retry"
                )

            await eventually(lambda: waits() >= 6, timeout=20, what="waits for the endpoint")

            # Then once the endpoint answers, each delivery arrives after the failures its
            # schedule allows for (each had up to seven attempts)
            assert endpoint.hold is not None
            endpoint.hold.set()
            await eventually(
                lambda: len(endpoint.succeeded("job.accepted")) == 3,
                timeout=30,
                what="every delivery to succeed",
            )
        assert len(endpoint.of_type("job.accepted")) == 3 + 4
        assert len({call.webhook_id for call in endpoint.succeeded("job.accepted")}) == 3
        assert all(call.verified for call in endpoint.calls)
        # ... because a waiting message is handed on before the cap; none reached it
        assert not [line for line in logs if line["event"] == "delivery.gave_up"]
        assert any(line["event"] == "delivery.handed_on" for line in logs)
    finally:
        await endpoint.stop()
        await stop_system(system)


async def test_killing_the_notifier_mid_retry_loses_no_delivery(
    env: dict[str, str],
    http: aiohttp.ClientSession,
    receiver: Receiver,
    jellyfin: JellyfinStandIn,
    tmp_path: Path,
) -> None:
    # Given every service in this process but the notifier, which runs as its own process
    settings = {
        **env,
        **FAST,
        "VIDMESH_WEBHOOK_RETRY_SCHEDULE": "1,1,1,1,1,1,1,1,1,1",
        # An attempt cut short by a kill comes back after 9 s (ack_wait).
        "VIDMESH_WEBHOOK_TIMEOUT": "2",
    }
    system = await start_system(settings, "scheduler", "storage", "transcoder", "gateway")
    notifiers: list[ServiceProcess] = []

    async def start_notifier() -> ServiceProcess:
        log = tmp_path / f"notifier-{len(notifiers)}.log"
        process = ServiceProcess("notifier", settings, log).start()
        notifiers.append(process)
        await eventually(lambda: '"service.ready"' in process.log(), what="the notifier")
        return process

    try:
        notifier = await start_notifier()
        admin = await Api(http, system.url).as_user("admin", ADMIN_PASSWORD, register=False)
        ann = await admin.as_user("ann")
        sub = await subscribe(admin, receiver, "/api/admin/webhooks")
        source = jellyfin.stream_url("fits", ALICE)

        # ... and a delivery waiting for its next retry
        receiver.failing = True
        job = await ann.ok("POST", "/api/jobs", 201, json={"source": source})
        await eventually(lambda: receiver.calls, what="a first failed attempt")
        first_id = receiver.calls[0].webhook_id
        await delivery_of(admin, "/api/admin/webhooks", first_id, "pending")

        # When the notifier is killed with SIGKILL, and a new one starts once the endpoint works
        notifier.kill()
        receiver.failing = False
        notifier = await start_notifier()

        # Then the delivery arrives, with its webhook-id, exactly once with success
        done = await delivery_of(admin, "/api/admin/webhooks", first_id, "succeeded")
        arrived = receiver.succeeded("job.accepted")
        assert [c.webhook_id for c in arrived] == [first_id]
        assert arrived[0].verified and arrived[0].payload["data"]["job_id"] == job["id"]
        assert done["attempt_count"] >= 2 and sub["id"] == done["webhook_id"]

        # When a notifier is killed in the middle of an attempt (the endpoint has not answered)
        receiver.hold = asyncio.Event()
        second = await ann.ok("POST", "/api/jobs", 201, json={"source": source + "&n=2"})
        await eventually(lambda: receiver.waiting == 1, what="an attempt in flight")
        notifier.kill()
        stuck, receiver.hold = receiver.hold, None  # the dead notifier's request stays unanswered
        assert stuck is not None
        last = await start_notifier()

        # Then that delivery is attempted again once its attempt times out, and arrives
        async def second_arrived() -> list[Received]:
            return [
                c
                for c in receiver.succeeded("job.accepted")
                if c.payload["data"]["job_id"] == second["id"]
            ]

        (again,) = await eventually(second_arrived, timeout=30, what="the second delivery")
        assert again.verified
        await delivery_of(admin, "/api/admin/webhooks", again.webhook_id, "succeeded")
        # ... by the new notifier, which logs a delivery once the endpoint has answered
        await eventually(lambda: again.webhook_id in last.log(), what="the new notifier's log")
        stuck.set()
    finally:
        for process in notifiers:
            if process.alive:
                process.kill()
        await stop_system(system)


async def test_a_test_delivery_with_no_notifier_running_answers_503_and_is_never_sent_late(
    env: dict[str, str], http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    # Given a gateway but no notifier (and a short wait for one to take a command)
    system = await start_system({**env, **FAST, "VIDMESH_COMMAND_TIMEOUT": "1"}, "gateway")
    try:
        admin = await Api(http, system.url).as_user("admin", ADMIN_PASSWORD, register=False)
        sub = await subscribe(admin, receiver, "/api/admin/webhooks")

        # When an operator tests the subscription, the answer says the notifier is not there
        status, body, _ = await admin.call("POST", f"/api/admin/webhooks/{sub['id']}/test")
        assert status == 503 and "notifier" in body["error"]["message"], body

        # ... and a notifier that starts later drops the test nobody waits for any more
        notifier = build_service("notifier", system.nc, system.env)
        await notifier.start()
        system.services["notifier"] = notifier
        names = system.names

        async def commands_done() -> bool:
            info = await system.nc.jetstream().consumer_info(
                names.commands_stream, names.notifier_commands_consumer
            )
            return (
                info.num_pending == 0
                and info.num_ack_pending == 0
                and info.delivered.stream_seq > 0
            )

        await eventually(commands_done, what="the notifier to take the old command")
        assert receiver.calls == []
    finally:
        await stop_system(system)
