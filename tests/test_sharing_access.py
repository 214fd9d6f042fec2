"""Sharing an output fails closed: a job gets the output another user's job asked for first only
when the source answers the job's own URL (its own token) with 2xx/206 to a one-byte ranged GET.
A check that times out, redirects (to a login page) or answers anything else gives the job its
own rendition, transcoded from its own URL; and a hanging check never holds up the scheduler."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest_asyncio
from aiohttp import web

from services.scheduler.access import AccessCheck, Verdict
from shared.jobs import state as jobstate
from shared.outbound import OutboundPolicy
from tests.harness import Client, System, eventually, start_system, stop_system
from tests.jellyfin_standin import JellyfinStandIn

FIRST = "token-first"
# The way the media server answers each token's share check (its one-byte ranged GET).
CHECK_ANSWERS = {
    "token-hangs": "hang",
    "token-login": "login",
    "token-error": "error",
    "token-fine": "fine",
}


@dataclass
class CheckingJellyfin(JellyfinStandIn):
    """A Jellyfin stand-in that answers a token's one-byte ranged GET as `check_answers` says:
    "hang" (until `release` is set, then 206), "login" (302 to a login page that answers 200),
    "error" (500); media requests of every other shape are served as usual."""

    check_answers: dict[str, str] = field(default_factory=dict)
    checks: Counter[str] = field(default_factory=Counter)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        token = self._token(request) or ""
        answer = self.check_answers.get(token)
        if request.headers.get("Range") == "bytes=0-0" and answer is not None:
            self.checks[token] += 1
            if answer == "hang":
                await self.release.wait()
            elif answer == "login":
                raise web.HTTPFound("/Files/login")
            elif answer == "error":
                return web.Response(status=500, text="internal error")
        return await super().stream(request)


@pytest_asyncio.fixture
async def media_server(clips: dict[str, Path]) -> AsyncIterator[CheckingJellyfin]:
    server = CheckingJellyfin(check_answers=dict(CHECK_ANSWERS))
    server.add_user(FIRST, "user-first", "First")
    for token in CHECK_ANSWERS:
        server.add_user(token, f"user-{token}", token)
    for item_id, path in clips.items():
        server.add_media(item_id, path)
    server.texts["login"] = "<html><body>Please sign in</body></html>"
    await server.start()
    yield server
    server.release.set()
    await server.stop()


async def _system(env: dict[str, str], server: CheckingJellyfin, timeout: str) -> System:
    return await start_system(
        {**env, "JELLYFIN_URL": server.url, "VIDMESH_SHARE_CHECK_TIMEOUT": timeout}
    )


async def _completed(client: Client, job_id: str) -> dict[str, object]:
    job = await client.wait_status(job_id, "completed", "failed", timeout=60)
    assert job["status"] == "completed", job
    return job


async def test_a_share_check_that_times_out_redirects_or_errs_gives_the_job_its_own_rendition(
    env: dict[str, str], http: aiohttp.ClientSession, media_server: CheckingJellyfin
) -> None:
    system = await _system(env, media_server, "1")
    try:
        # Given a first user's finished output
        first = Client(http, system.url, FIRST)
        first_id = await first.submit(media_server.stream_url("fits", FIRST), device="first")
        await _completed(first, first_id)
        original = system.scheduler.jobs.get(first_id)
        assert original is not None and original.output is not None

        for token, answer in CHECK_ANSWERS.items():
            # When another user asks for the same media with their own token
            other = Client(http, system.url, token)
            job_id = await other.submit(media_server.stream_url("fits", token), device=token)
            job = await _completed(other, job_id)
            assert media_server.checks[token] >= 1, token
            record = system.scheduler.jobs.get(job_id)
            assert record is not None and record.output is not None
            status, body, _ = await other.request("GET", f"/download/{job_id}")
            assert status == 200 and hashlib.sha256(body).hexdigest() == job["checksum"]
            if answer == "fine":
                # Then a 206 to their own request shares the first output, as before
                assert record.shared and record.rendition == original.rendition, answer
                assert record.output.blob == original.output.blob
                continue
            # Then a check that timed out, redirected or failed gives them their own rendition,
            # transcoded from their own URL; the first user's output is not what they download
            assert not record.shared and not job["shared"], answer
            assert record.rendition != original.rendition, answer
            assert record.output.blob != original.output.blob, answer
            rendition = system.scheduler.renditions.get(record.rendition or "")
            assert rendition is not None and f"api_key={token}" in rendition.source, answer
    finally:
        await stop_system(system)


async def test_the_scheduler_keeps_dispatching_while_a_share_check_hangs(
    env: dict[str, str], http: aiohttp.ClientSession, media_server: CheckingJellyfin
) -> None:
    system = await _system(env, media_server, "60")
    try:
        first = Client(http, system.url, FIRST)
        first_id = await first.submit(media_server.stream_url("fits", FIRST), device="first")
        await _completed(first, first_id)

        # Given another user's job whose share check hangs (the server holds the answer)
        waiting = Client(http, system.url, "token-hangs")
        waiting_id = await waiting.submit(
            media_server.stream_url("fits", "token-hangs"), device="hangs"
        )

        # When the first user asks for other media meanwhile
        other_id = await first.submit(media_server.stream_url("hevc", FIRST), device="first")

        # Then that job is placed, dispatched and completed while the check still hangs
        await _completed(first, other_id)
        assert media_server.checks["token-hangs"] == 1
        assert (await waiting.job(waiting_id))["status"] == "queued"

        # And once the source answers the check with 206, the waiting job shares the output
        media_server.release.set()
        await _completed(waiting, waiting_id)
        shared = system.scheduler.jobs.get(waiting_id)
        original = system.scheduler.jobs.get(first_id)
        assert shared is not None and original is not None
        assert shared.shared and shared.rendition == original.rendition
    finally:
        await stop_system(system)


async def test_a_share_check_keeps_to_the_outbound_policy() -> None:
    """A source on an address the policy refuses is never asked: the job gets its own rendition
    (whose transcode the transcoder's proxy refuses in turn); the trusted Jellyfin is asked."""
    hits: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(status=206, body=b"x")

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    refusing = AccessCheck(OutboundPolicy.parse(""), timeout=2)
    trusting = AccessCheck(OutboundPolicy.parse("", trust=[f"http://127.0.0.1:{port}"]))
    try:
        refused = await refusing.answer(f"http://127.0.0.1:{port}/Videos/a/stream")
        assert refused.verdict is Verdict.UNKNOWN and hits == []
        named = await refusing.answer(f"http://localhost:{port}/Videos/a/stream")
        assert named.verdict is Verdict.UNKNOWN and hits == []
        allowed = await trusting.answer(f"http://127.0.0.1:{port}/Videos/a/stream")
        assert allowed.verdict is Verdict.ALLOWED and hits == ["/Videos/a/stream"]
    finally:
        await refusing.close()
        await trusting.close()
        await runner.cleanup()


# The 20 s clip served at this rate takes several seconds: long enough to join it while it runs.
SLOW = "100000"


async def test_a_job_whose_own_url_answers_206_shares_an_output_still_being_made(
    env: dict[str, str], http: aiohttp.ClientSession, media_server: CheckingJellyfin
) -> None:
    system = await _system(env, media_server, "5")
    try:
        # Given a first user's job still being transcoded
        first = Client(http, system.url, FIRST)
        first_id = await first.submit(
            media_server.stream_url("long_ts", FIRST, kind="live", rate=SLOW), device="first"
        )
        await first.wait_status(first_id, "optimizing")

        # When another user, whose own URL the source answers, asks for the same media
        fine = Client(http, system.url, "token-fine")
        job_id = await fine.submit(
            media_server.stream_url("long_ts", "token-fine", kind="live", rate=SLOW), device="fine"
        )

        # Then that job joins the running transcode: the output is shared, not made twice
        joined = await fine.wait_status(job_id, "optimizing")
        record = system.scheduler.jobs.get(job_id)
        original = system.scheduler.jobs.get(first_id)
        assert record is not None and original is not None
        assert record.shared and joined["shared"], joined
        assert record.rendition == original.rendition
    finally:
        await stop_system(system)


async def test_a_share_check_ends_with_its_job_when_the_job_is_cancelled(
    env: dict[str, str], http: aiohttp.ClientSession, media_server: CheckingJellyfin
) -> None:
    system = await _system(env, media_server, "3")
    try:
        first = Client(http, system.url, FIRST)
        first_id = await first.submit(media_server.stream_url("fits", FIRST), device="first")
        await _completed(first, first_id)

        # Given another user's job whose share check hangs
        waiting = Client(http, system.url, "token-hangs")
        job_id = await waiting.submit(
            media_server.stream_url("fits", "token-hangs"), device="hangs"
        )

        def checking() -> bool:
            return system.scheduler.sharing.pending(job_id)

        await eventually(checking, what="the share check to be out")

        # When the user cancels the job meanwhile
        status, body, _ = await waiting.request("DELETE", f"/cancel-job/{job_id}")
        assert status == 200, body

        # Then the check ends with it, and nothing is made for a job nobody wants any more
        def ended() -> bool:
            return not system.scheduler.sharing.pending(job_id)

        await eventually(ended, what="the share check to end")
        assert (await waiting.job(job_id))["status"] == "cancelled"
        record = system.scheduler.jobs.get(job_id)
        original = system.scheduler.jobs.get(first_id)
        assert record is not None and original is not None and original.rendition
        own = jobstate.own_rendition_key(original.rendition, job_id)
        assert system.scheduler.renditions.get(own) is None
    finally:
        await stop_system(system)
