"""Files face: a job's output for clients with headers, and short-lived signed URLs a browser
opens with none. Both keep the foundation's Range, checksum and resume behaviour."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import msgspec
from aiohttp import web

from services.gateway.api import API, Access, Tag, caller
from services.gateway.downloads import serve_output
from services.gateway.faces.native.jobs_common import visible_job
from services.gateway.http import json_response
from services.gateway.links import absolute_url
from services.gateway.state import gateway
from shared.errors import Conflict, NotFound, Unauthorized
from shared.jobs import state as jobstate
from shared.messages.records import JobRecord

TAG = Tag.FILES


class SignedUrl(msgspec.Struct, kw_only=True):
    """A URL that downloads one job's output without headers, until it expires; when the
    output is in an object store, also the store's own signed URL (no proxying, but no
    checksum headers either)."""

    url: str
    expires_at: datetime
    direct_url: str | None = None


class DownloadQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Download options."""

    redirect: bool = False


class FileQuery(DownloadQuery, kw_only=True, forbid_unknown_fields=True):
    """The signed token, and download options."""

    token: str


@API.route(
    "GET",
    "/api/jobs/{job_id}/file",
    access=Access.USER,
    tag=TAG,
    binary=True,
    query=DownloadQuery,
    summary="Download a job's output (Range, If-Range, X-File-Checksum; ?redirect=true "
    "answers a redirect to the object store's signed URL when it has one)",
    statuses=(206, 302, 409, 416),
)
async def job_file(request: web.Request, query: DownloadQuery) -> web.StreamResponse:
    job = await visible_job(request, request.match_info["job_id"])
    return await serve_output(gateway(request), request, job, allow_redirect=query.redirect)


@API.route(
    "POST",
    "/api/jobs/{job_id}/url",
    access=Access.USER,
    tag=TAG,
    summary="A short-lived signed URL to download the output without headers",
    response=SignedUrl,
    statuses=(409,),
)
async def job_url(request: web.Request) -> web.Response:
    job = await visible_job(request, request.match_info["job_id"])
    return json_response(await signed_url(request, job))


async def signed_url(request: web.Request, job: JobRecord) -> SignedUrl:
    """A signed URL for a finished job's output, minted by the caller (it ends with the
    caller's access); 409 when the job holds no output."""
    gw = gateway(request)
    if not jobstate.holds_output(job, time.time()):
        raise Conflict(f"Job {job.id} has no output to download ({job.status}).")
    seconds = gw.settings.signed_url_seconds
    minter = gw.identity.users.get(caller(request).user_id)
    if minter is None:
        raise Unauthorized("This account no longer exists.")
    token, expires = gw.identity.sign_file_token(job.id, job.owner, minter, seconds)
    url = absolute_url(request, "/api/files", {"token": token})
    assert job.output is not None
    store = await gw.stores.get(job.output.store)
    direct = await store.presign(job.output.blob, seconds)
    return SignedUrl(url=url, expires_at=datetime.fromtimestamp(expires, UTC), direct_url=direct)


@API.route(
    "GET",
    "/api/files",
    access=Access.SIGNED,
    tag=TAG,
    binary=True,
    query=FileQuery,
    summary="Download through a signed URL (no headers needed)",
    statuses=(206, 416),
)
async def signed_file(request: web.Request, query: FileQuery) -> web.StreamResponse:
    gw = gateway(request)
    claims = gw.identity.file_claims(query.token)
    job = await gw.job(str(claims.get("job", "")))
    if job is None:
        raise NotFound("The job of this link no longer exists.")
    if job.owner != claims.get("sub"):
        raise Unauthorized("This link does not belong to the job's owner.")
    return await serve_output(gw, request, job, allow_redirect=query.redirect)
