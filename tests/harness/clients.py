"""HTTP clients of the gateway as its users talk to it: `Client` is the Streamyfin app (a
Jellyfin token), `Api` a user of the native API (a bearer token, an API key, or nobody)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from tests.harness.waiting import eventually


async def send(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    credentials: dict[str, str],
    /,
    **kwargs: Any,
) -> tuple[int, Any, aiohttp.ClientResponse]:
    """One request with the client's `credentials` headers (a request's own `headers` win): its
    status, its body (decoded when it is JSON, else bytes), the response."""
    headers = {**credentials, **kwargs.pop("headers", {})}
    async with session.request(method, url, headers=headers, **kwargs) as resp:
        body = await resp.read()
        data: Any = json.loads(body) if resp.content_type == "application/json" else body
        return resp.status, data, resp


class Client:
    """An HTTP client that talks to the gateway as the Streamyfin app does."""

    def __init__(self, session: aiohttp.ClientSession, base: str, token: str) -> None:
        self.session = session
        self.base = base.rstrip("/")
        self.token = token

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": self.token, **extra}

    async def request(
        self, method: str, path: str, **kwargs: Any
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        return await send(self.session, method, self.base + path, self.headers(), **kwargs)

    async def submit(
        self,
        url: str,
        *,
        device: str = "dev-1",
        ext: str | None = None,
        item: dict[str, Any] | None = None,
    ) -> str:
        payload: dict[str, Any] = {
            "url": url,
            "deviceId": device,
            "itemId": (item or {}).get("Id", "item-1"),
        }
        if ext is not None:
            payload["fileExtension"] = ext
        payload["item"] = item or {"Id": payload["itemId"], "Name": "Test clip", "Type": "Movie"}
        status, body, _ = await self.request("POST", "/optimize-version", json=payload)
        assert status == 201, (status, body)
        return str(body["id"])

    async def job(self, job_id: str) -> dict[str, Any]:
        status, body, _ = await self.request("GET", f"/job-status/{job_id}")
        assert status == 200, (status, body)
        return body  # type: ignore[no-any-return]

    async def wait_status(
        self, job_id: str, *statuses: str, timeout: float = 30.0
    ) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            job = await self.job(job_id)
            return job if job["status"] in statuses else None

        return await eventually(check, timeout=timeout, what=f"job {job_id} to be {statuses}")


class Api:
    """A client of the native API, signed in with a token or an API key (or anonymous)."""

    def __init__(
        self, session: aiohttp.ClientSession, base: str, *, token: str = "", api_key: str = ""
    ) -> None:
        self.session = session
        self.base = base.rstrip("/")
        self.token = token
        self.api_key = api_key

    def headers(self) -> dict[str, str]:
        if self.api_key:
            return {"x-api-key": self.api_key}
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def call(
        self, method: str, path: str, **kwargs: Any
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        return await send(self.session, method, self.base + path, self.headers(), **kwargs)

    async def ok(self, method: str, path: str, expect: int = 200, **kwargs: Any) -> Any:
        status, body, _ = await self.call(method, path, **kwargs)
        assert status == expect, (method, path, status, body)
        return body

    async def as_user(
        self, username: str, password: str = "password-123", *, register: bool = True
    ) -> Api:
        """A client signed in as `username` (registered first when asked)."""
        anonymous = Api(self.session, self.base)
        if register:
            await anonymous.ok(
                "POST", "/api/auth/register", 201, json={"username": username, "password": password}
            )
        tokens = await anonymous.ok(
            "POST", "/api/auth/login", json={"username": username, "password": password}
        )
        return Api(self.session, self.base, token=tokens["access_token"])

    async def wait_job(self, job_id: str, *statuses: str, timeout: float = 30.0) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            job = await self.ok("GET", f"/api/jobs/{job_id}")
            return job if job["status"] in statuses else None

        return await eventually(check, timeout=timeout, what=f"job {job_id} to be {statuses}")
