"""The operator's dashboard as people use it: a real chromium, driven by Playwright, against
`vidmesh up` started by the test. Each test says what a person does and what they must see.
Screenshots of every page are saved under test-artifacts/dashboard/."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import (
    Browser,
    BrowserContext,
    Page,
    Route,
    WebSocketRoute,
    async_playwright,
    expect,
)

from tests.harness import ADMIN_PASSWORD, Api, eventually
from tests.harness.browser import CHROMIUM_ARGS, PageWatch, chromium_path, screenshot
from tests.harness.up import Up, checkout_up, up_env, without_settings
from tests.media_clips import make_clip

pytestmark = pytest.mark.slow

USER, USER_PASSWORD = "dana", "dana-password-1"
UI_TIMEOUT = 20_000  # ms: what a person waits at most for the page to show a change


@pytest_asyncio.fixture(scope="module")
async def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A media root with sources that take the 480p preset a few seconds to encode (720p in)."""
    root = tmp_path_factory.mktemp("dashboard-media")
    for name, seconds in (("film.mp4", 40), ("long.mp4", 120)):
        await asyncio.to_thread(
            make_clip, root / name, seconds=seconds, width=1280, height=720, fps=30,
            extra_args=["-preset", "ultrafast"],
        )  # fmt: skip
    return root


@pytest_asyncio.fixture(scope="module")
async def up(tmp_path_factory: pytest.TempPathFactory, media: Path) -> AsyncIterator[Up]:
    data = tmp_path_factory.mktemp("dashboard") / "data"
    data.mkdir()
    env = up_env(
        data,
        None,
        base=without_settings(os.environ),
        VIDMESH_MEDIA_ROOTS=str(media),
        VIDMESH_ADMIN_PASSWORD=ADMIN_PASSWORD,
        VIDMESH_REGISTRATION="open",
    )
    async with checkout_up(env, data.parent / "up.log") as run:
        async with aiohttp.ClientSession() as http:
            await Api(http, run.url).as_user(USER, USER_PASSWORD)
        yield run


@pytest_asyncio.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@pytest_asyncio.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    ctx = await browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    ctx.set_default_timeout(UI_TIMEOUT)
    yield ctx
    await ctx.close()


@pytest_asyncio.fixture
async def admin_api(up: Up) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as http:
        yield await Api(http, up.url).as_user("admin", ADMIN_PASSWORD, register=False)


@pytest_asyncio.fixture
async def user_api(up: Up) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as http:
        yield await Api(http, up.url).as_user(USER, USER_PASSWORD, register=False)


async def open_page(context: BrowserContext, up: Up) -> tuple[Page, PageWatch]:
    watch = PageWatch(up.url)
    page = watch.attach(await context.new_page())
    await page.goto(up.url + "/")
    return page, watch


async def sign_in(page: Page, username: str, password: str) -> None:
    """By keyboard, as a person without a mouse would: type, Tab, type, Enter."""
    await page.get_by_label("Username").focus()
    await page.keyboard.type(username)
    await page.keyboard.press("Tab")
    await page.keyboard.type(password)
    await page.keyboard.press("Enter")
    await expect(page.locator("#connection")).to_have_text("Live")


def job_row(page: Page, job_id: str):  # type: ignore[no-untyped-def]
    return page.locator(f'#jobs-table tr[data-job-id="{job_id}"]')


async def submit(page: Page, source: str, preset: str) -> str:
    """Submit a job with the form; the id of the row that appears for it."""
    before = set(await page.locator("#jobs-table tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.jobId)"))  # fmt: skip
    await page.get_by_label("Source", exact=True).fill(source)
    await page.get_by_label("Preset", exact=True).select_option(preset)
    await page.get_by_role("button", name="Submit job").click()
    await expect(page.get_by_text("Job submitted")).to_be_visible()

    async def new_row() -> str | None:
        ids = await page.locator("#jobs-table tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.jobId)"
        )
        fresh = [i for i in ids if i not in before]
        return fresh[0] if fresh else None

    return await eventually(new_row, timeout=10, what="the submitted job's row")


async def test_sign_in_survives_a_reload_and_sign_out_ends_it(
    context: BrowserContext, up: Up
) -> None:
    """Given an account, when its owner signs in with the keyboard, they see their jobs; a wrong
    password says so; a reload keeps them signed in; signing out brings the sign-in form back,
    a reload does not undo it, and the session's tokens no longer work anywhere."""
    page, watch = await open_page(context, up)
    await screenshot(page, "sign-in")
    await page.get_by_label("Username").fill(USER)
    await page.get_by_label("Password").fill("not-the-password")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_have_text("Wrong username or password.")

    await page.get_by_label("Password").fill("")
    await page.get_by_label("Username").fill("")
    await sign_in(page, USER, USER_PASSWORD)
    await expect(page.get_by_role("heading", name="Your jobs")).to_be_visible()
    await expect(page.locator("#whoami")).to_have_text(f"{USER} (user)")
    # an ordinary account sees no administrators' pages
    await expect(page.get_by_role("link", name="Fleet")).to_have_count(0)

    await page.reload()
    await expect(page.get_by_role("heading", name="Your jobs")).to_be_visible()
    await expect(page.locator("#connection")).to_have_text("Live")

    kept = await page.evaluate("JSON.parse(sessionStorage.getItem('vidmesh.session'))")
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    await page.reload()
    await expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    # signing out ended the session on the server: a copy of its tokens is worth nothing
    async with aiohttp.ClientSession() as http:
        async with http.get(
            up.url + "/api/users/me", headers={"Authorization": f"Bearer {kept['access']}"}
        ) as r:
            assert r.status == 401
        async with http.post(
            up.url + "/api/auth/refresh", json={"refresh_token": kept["refresh"]}
        ) as r:
            assert r.status == 401
    watch.errors = [e for e in watch.errors if "401" not in e]  # the wrong password's answer
    watch.assert_clean()


async def test_a_job_submitted_in_the_page_reaches_100_percent_live_and_downloads_intact(
    context: BrowserContext, up: Up, media: Path, user_api: Api, admin_api: Api
) -> None:
    """Given a signed-in user, when they submit a job with the form, its row appears and its
    progress bar moves and reaches 100 % with no reload; Download saves the output, whose
    SHA-256 is the job's; another account's jobs are not in their table."""
    admin_job = await admin_api.ok(
        "POST", "/api/jobs", 201, json={"source": str(media / "film.mp4"), "preset": "audio-aac"}
    )
    page, watch = await open_page(context, up)
    await sign_in(page, USER, USER_PASSWORD)
    await page.evaluate("window.__sameDocument = true")  # gone if the page reloads

    job_id = await submit(page, str(media / "film.mp4"), "h264-480p")
    row = job_row(page, job_id)
    bar = row.locator("progress")
    seen: set[float] = set()

    async def progress_between() -> bool:
        seen.add(float(await bar.evaluate("b => b.value")))
        return any(0 < v < 100 for v in seen)

    await eventually(
        progress_between, timeout=60, interval=0.1, what="a progress bar between 0 and 100"
    )
    await screenshot(page, "jobs-running")
    await expect(row.locator(".badge")).to_have_text("completed", timeout=120_000)
    await expect(row.locator(".pct")).to_have_text("100 %")
    assert await bar.evaluate("b => b.value") == 100
    assert await page.evaluate("window.__sameDocument === true"), "the page reloaded"
    await expect(job_row(page, admin_job["id"])).to_have_count(0)

    job = await user_api.ok("GET", f"/api/jobs/{job_id}")
    async with page.expect_download() as download_info:
        await row.get_by_role("button", name=re.compile("^Download")).click()
    download = await download_info.value
    saved = await asyncio.to_thread(Path(await download.path()).read_bytes)
    assert hashlib.sha256(saved).hexdigest() == job["output"]["sha256"]
    assert len(saved) == job["output"]["size"]
    await screenshot(page, "jobs")

    # the job's page: its probe, how it ran (the ffmpeg command) and its history
    await row.get_by_role("link").click()
    await expect(page.get_by_role("heading", name="Source probe")).to_be_visible()
    await expect(page.locator("pre.argv")).to_contain_text("-i")
    await expect(page.locator("#job-history")).to_contain_text("job.completed")
    await expect(page.locator("[data-sha256]")).to_have_text(job["output"]["sha256"])
    await screenshot(page, "job")
    watch.assert_clean()


async def test_cancelling_a_job_in_the_page_stops_it(
    context: BrowserContext, up: Up, media: Path, user_api: Api
) -> None:
    """Given a long job running, when its owner clicks Cancel and confirms, the row shows it
    cancelled, and the API says so too."""
    page, watch = await open_page(context, up)
    await sign_in(page, USER, USER_PASSWORD)
    job_id = await submit(page, str(media / "long.mp4"), "h264-480p")
    row = job_row(page, job_id)
    await expect(row.locator(".badge")).to_contain_text("running", timeout=60_000)
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await row.get_by_role("button", name=re.compile("^Cancel")).click()
    await expect(row.locator(".badge")).to_have_text("cancelled")
    assert (await user_api.ok("GET", f"/api/jobs/{job_id}"))["status"] == "cancelled"
    await expect(row.get_by_role("button", name=re.compile("^Retry"))).to_be_visible()
    watch.assert_clean()


async def test_an_administrator_sees_the_transcoder_in_the_fleet_view(
    context: BrowserContext, up: Up, admin_api: Api
) -> None:
    """Given a running transcoder, the Fleet page lists it with its pool and its slots, and
    says it has no GPU and why."""
    machines = await admin_api.ok("GET", "/api/machines")
    assert machines, "vidmesh up runs a transcoder"
    page, watch = await open_page(context, up)
    await sign_in(page, "admin", ADMIN_PASSWORD)
    await page.get_by_role("link", name="Fleet").click()
    transcoder = page.get_by_role("row").filter(has_text=machines[0]["id"])
    await expect(transcoder).to_be_visible()
    await expect(transcoder).to_contain_text("default")
    await expect(transcoder).to_contain_text(f"of {machines[0]['slots']}")
    await expect(page.get_by_text(re.compile("No GPU", re.I)).first).to_be_visible()
    await screenshot(page, "fleet")
    watch.assert_clean()


async def test_every_page_renders_at_desktop_and_phone_width_without_errors_or_other_hosts(
    context: BrowserContext, browser: Browser, up: Up
) -> None:
    """Given an administrator, each page shows its heading at 1280 px and at 375 px, with no
    script error, no CSP violation and no request to any host but the server's own."""
    page, watch = await open_page(context, up)
    await sign_in(page, "admin", ADMIN_PASSWORD)
    pages = ["jobs", "fleet", "queues", "presets", "keys", "webhooks", "settings"]
    for name in pages:
        await page.goto(f"{up.url}/#/{name}")
        await expect(page.locator("main h1")).to_be_visible()
        await page.wait_for_load_state("networkidle")
        await screenshot(page, name)
    phone = await browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True)
    try:
        phone_watch = PageWatch(up.url)
        small = phone_watch.attach(await phone.new_page())
        await small.goto(up.url + "/")
        await sign_in(small, "admin", ADMIN_PASSWORD)
        for name in pages:
            await small.goto(f"{up.url}/#/{name}")
            await expect(small.locator("main h1")).to_be_visible()
            await small.wait_for_load_state("networkidle")
            width = await small.evaluate("document.documentElement.scrollWidth")
            assert width <= 375, f"#{name} is {width} px wide at a phone's 375 px"
            await screenshot(small, f"phone-{name}")
        phone_watch.assert_clean()
    finally:
        await phone.close()
    watch.assert_clean()


async def test_a_lost_connection_is_shown_and_recovered(context: BrowserContext, up: Up) -> None:
    """Given a signed-in page, when the gateway dies, the page says the connection is lost;
    when `vidmesh up` has restarted it, the page is live again by itself."""
    page, watch = await open_page(context, up)
    await sign_in(page, "admin", ADMIN_PASSWORD)
    gateway = up.children()["gateway"]
    os.kill(gateway, signal.SIGKILL)
    await expect(page.locator("#connection")).to_contain_text("Connection lost")
    await screenshot(page, "connection-lost")
    await expect(page.locator("#connection")).to_have_text("Live", timeout=60_000)
    assert up.children()["gateway"] != gateway
    # requests that failed while the gateway was down are expected console errors
    watch.errors = [
        e for e in watch.errors if "ERR_CONNECTION_REFUSED" not in e and "WebSocket" not in e
    ]
    watch.assert_clean()


async def test_the_page_and_its_modules_carry_security_and_cache_headers(up: Up) -> None:
    """Given a browser asking for `/`: the page comes with a CSP that allows only the server's
    own scripts (no inline script) and the other security headers, and is revalidated by its
    ETag (304); its modules live under a versioned path cached for a year, an older version is
    served uncached, an unknown file is a JSON 404, and a client asking for JSON gets what this
    server is instead of the page."""
    async with aiohttp.ClientSession() as http:
        async with http.get(up.url + "/", headers={"Accept": "text/html,*/*"}) as r:
            assert r.status == 200 and r.content_type == "text/html"
            page = await r.text()
            headers = r.headers
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-" not in csp
        assert "frame-ancestors 'none'" in csp and "connect-src 'self'" in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["Cache-Control"] == "no-cache"
        assert not re.search(r"<script(?![^>]*\bsrc=)", page), "an inline script"
        assert not re.search(r"\sstyle=|<style", page), "an inline style"
        assert not re.search(r"(src|href)=\"(https?:)?//", page), "a resource from another host"

        async with http.get(up.url + "/", headers={"If-None-Match": headers["ETag"]}) as r:
            assert r.status == 304

        module = re.search(r'src="(/dashboard/([0-9a-f]+)/app\.js)"', page)
        assert module, page
        path, version = module.groups()
        async with http.get(up.url + path) as r:
            assert r.status == 200 and r.content_type == "text/javascript"
            assert "immutable" in r.headers["Cache-Control"]
            assert "max-age=31536000" in r.headers["Cache-Control"]
            assert r.headers["Content-Security-Policy"] == csp
        async with http.get(up.url + "/dashboard/0000000000/app.js") as r:
            assert r.status == 404 and "reload" in (await r.json())["error"]["message"]
        for missing in (f"/dashboard/{version}/nope.js", f"/dashboard/{version}/%2e%2e/pages.py"):
            async with http.get(up.url + missing) as r:
                assert r.status == 404, missing
                assert (await r.json())["error"]["code"] == "not_found"

        async with http.get(up.url + "/", headers={"Accept": "application/json"}) as r:
            assert r.status == 200 and (await r.json())["name"] == "vidmesh"


async def test_where_websockets_are_blocked_the_page_goes_live_over_server_sent_events(
    context: BrowserContext, up: Up, media: Path, user_api: Api
) -> None:
    """Given a network that refuses WebSockets (a proxy that does not pass them), the page
    falls back to the SSE feed: it is live, and a job submitted elsewhere appears in the table
    and reaches 100 % without a reload."""

    async def refuse(socket: WebSocketRoute) -> None:
        await socket.close(code=1006)

    await context.route_web_socket(re.compile(r"/api/ws$"), refuse)
    page, watch = await open_page(context, up)
    await sign_in(page, USER, USER_PASSWORD)
    await expect(page.locator("#connection")).to_have_attribute("data-transport", "sse")
    job = await user_api.ok(
        "POST", "/api/jobs", 201, json={"source": str(media / "film.mp4"), "preset": "h264-720p"}
    )
    row = job_row(page, job["id"])
    await expect(row).to_be_visible()
    await expect(row.locator(".badge")).to_have_text("completed", timeout=120_000)
    await expect(row.locator(".pct")).to_have_text("100 %")
    watch.errors = [e for e in watch.errors if "WebSocket" not in e]
    watch.assert_clean()


async def test_text_a_user_typed_is_shown_as_text_never_run(
    context: BrowserContext, up: Up, user_api: Api
) -> None:
    """Given a preset description, an API key name and a webhook description that hold markup
    with script, the pages show them literally and no script of theirs runs."""
    attack = '<img src=x onerror="window.__attacked=1"><script>window.__attacked=2</script>'
    await user_api.ok(
        "POST",
        "/api/presets",
        201,
        json={"name": "shown-as-text", "description": attack, "spec": {"container": "mp4"}},
    )
    await user_api.ok("POST", "/api/account/api-keys", 201, json={"name": attack[:60]})
    await user_api.ok(
        "POST",
        "/api/webhooks",
        201,
        json={"url": "https://hooks.example.com/", "event_types": ["job.*"], "description": attack},
    )
    page, watch = await open_page(context, up)
    await sign_in(page, USER, USER_PASSWORD)
    for name, shown in (("presets", attack), ("keys", attack[:60]), ("webhooks", attack)):
        await page.goto(f"{up.url}/#/{name}")
        await expect(page.get_by_text(shown, exact=True).first).to_be_visible()
        assert await page.evaluate("window.__attacked === undefined"), name
        assert await page.locator("main img[src='x'], main script").count() == 0, name
    watch.assert_clean()


async def test_a_page_of_an_older_release_offers_a_reload_instead_of_breaking(
    context: BrowserContext, up: Up
) -> None:
    """Given a page loaded before an upgrade (its modules' version is no longer served), when
    the user opens a page it has not loaded yet, it says so and offers a Reload that works."""
    page, watch = await open_page(context, up)
    await sign_in(page, USER, USER_PASSWORD)
    await page.route(re.compile(r"/dashboard/[0-9a-f]+/views/keys\.js$"), _gone)
    await page.get_by_role("link", name="API keys").click()
    await expect(page.get_by_role("heading", name="This page could not be loaded")).to_be_focused()
    await page.unroute(re.compile(r"/dashboard/[0-9a-f]+/views/keys\.js$"))
    await page.get_by_role("button", name="Reload").click()
    await expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    watch.errors = [e for e in watch.errors if "404" not in e]
    watch.assert_clean()


async def _gone(route: Route) -> None:
    await route.fulfill(status=404, content_type="application/json", body='{"error": {}}')
