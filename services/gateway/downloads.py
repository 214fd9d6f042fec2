"""Serving a finished output from whichever store holds it, with the same promises everywhere:
Range (`a-b`, `a-`, `-n`), 206 with Content-Range, 416 with `bytes */size`, ETag and If-Range to
resume, HEAD that changes nothing, and `X-File-Checksum` (the SHA-256 computed once when the output
was stored; nothing is hashed per request).

A local blob goes out through aiohttp's FileResponse (zero-copy sendfile); a blob in an object
store is streamed range by range, or, when asked with `?redirect=true`, answered with a redirect
to a short-lived signed URL of the store itself.
"""

from __future__ import annotations

import base64
import contextlib
import re
import time
from pathlib import Path
from urllib.parse import quote

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter

from services.gateway.state import Gateway
from shared import metrics as m
from shared.blobs.store import BlobStore
from shared.errors import Conflict, NotFound
from shared.jobs import state as jobstate
from shared.media import get_container
from shared.messages.records import JobRecord, Output

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_REDIRECT_SECONDS = 300


def download_name(job: JobRecord) -> str:
    """The name a client is offered: the job's chosen name, else `<item id or job id>.<ext>`
    (the item id is what Streamyfin saves the file as)."""
    if job.output_name:
        return job.output_name
    base = _SAFE.sub("_", job.item_id or job.id).strip("._") or job.id
    return f"{base}{get_container(job.container).extension}"


def content_disposition(name: str) -> str:
    """An attachment header any client parses: an ASCII fallback, and the UTF-8 name."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    header = f'attachment; filename="{fallback}"'
    if fallback != name:
        header += f"; filename*=UTF-8''{quote(name, safe='')}"
    return header


def stored_output(job: JobRecord) -> Output:
    """The job's output, or a clear error when there is none (yet)."""
    if job.output is None or not jobstate.holds_output(job, time.time()):
        if jobstate.is_active(job):
            raise Conflict(f"Job {job.id} has no output yet: it is still {job.status.value}.")
        raise NotFound(f"Job {job.id} has no output to download (it is {job.status.value}).")
    return job.output


async def serve_output(
    gw: Gateway, request: web.Request, job: JobRecord, *, allow_redirect: bool = False
) -> web.StreamResponse:
    """The job's output as a (ranged) file response."""
    output = stored_output(job)
    store = await gw.stores.get(output.store)
    headers = _headers(job, output)
    path = store.local_path(output.blob)
    if path is not None:
        if not path.is_file():
            raise NotFound(f"The output of job {job.id} is no longer stored.")
        response = _OutputResponse(path, chunk_size=1 << 20, headers=headers)
        response.content_type = output.mime
        return response
    if allow_redirect:
        url = await store.presign(output.blob, _REDIRECT_SECONDS)
        if url:
            raise web.HTTPFound(url, headers={"X-File-Checksum": output.sha256})
    return await _stream_remote(request, store, output, headers)


def _headers(job: JobRecord, output: Output) -> dict[str, str]:
    return {
        "Accept-Ranges": "bytes",
        "X-File-Checksum": output.sha256,
        "X-File-Size": str(output.size),
        "Digest": f"sha-256={base64.b64encode(bytes.fromhex(output.sha256)).decode()}",
        "Content-Disposition": content_disposition(download_name(job)),
        "Cache-Control": "private, no-transform",
    }


async def _stream_remote(
    request: web.Request, store: BlobStore, output: Output, headers: dict[str, str]
) -> web.StreamResponse:
    size = output.size
    etag = f'"{output.sha256}"'
    try:
        wanted = _range(request, size, etag)
    except _Unsatisfiable:
        return web.Response(
            status=416, headers={**headers, "Content-Range": f"bytes */{size}", "ETag": etag}
        )
    start, end = wanted if wanted is not None else (0, size)
    response = web.StreamResponse(status=206 if wanted is not None else 200, headers=headers)
    response.content_type = output.mime
    response.etag = output.sha256
    response.content_length = end - start
    if wanted is not None:
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    await response.prepare(request)
    _count(response.status, 0, "object")
    if request.method != "HEAD" and end > start:
        served = m.BYTES_SERVED.labels("object")  # looked up once, not per chunk
        async with contextlib.aclosing(store.read_range(output.blob, start, end)) as chunks:
            async for chunk in chunks:
                await response.write(chunk)
                served.inc(len(chunk))
    await response.write_eof()
    return response


class _Unsatisfiable(Exception):
    """The range lies outside the file."""


def _range(request: web.Request, size: int, etag: str) -> tuple[int, int] | None:
    """The byte range [start, end) asked for; None for the whole file."""
    if hdrs.RANGE not in request.headers:
        return None
    validator = request.headers.get(hdrs.IF_RANGE, "").strip()
    if validator and validator != etag:
        return None  # resuming a different file: send the current one whole
    try:
        wanted = request.http_range
    except ValueError:
        return None  # a Range we do not understand is ignored (RFC 9110)
    start, stop = wanted.start, wanted.stop
    if start is None:
        return None
    if start < 0:  # suffix: the last -start bytes
        start = max(0, size + start)
        stop = size
    if stop is None or stop > size:
        stop = size
    if start >= size or start >= stop:
        raise _Unsatisfiable
    return start, stop


class _OutputResponse(web.FileResponse):
    """FileResponse with RFC 9110 If-Range for entity tags too (aiohttp only compares dates)."""

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        writer = await super().prepare(_without_stale_range(request, self._path))
        _count(self.status, 0 if request.method == "HEAD" else self.content_length, "local")
        return writer


def _count(status: int, sent: int | None, store: str) -> None:
    m.DOWNLOADS.labels(str(status)).inc()
    if status in (200, 206) and sent:
        m.BYTES_SERVED.labels(store).inc(sent)


def _without_stale_range(request: web.BaseRequest, path: Path) -> web.BaseRequest:
    """Drop Range when If-Range names an entity tag that is not the file's current one."""
    validator = request.headers.get(hdrs.IF_RANGE, "").strip()
    if not validator or hdrs.RANGE not in request.headers:
        return request
    if not (validator.startswith('"') or validator.startswith("W/")):
        return request  # an HTTP-date: aiohttp handles it
    st = path.stat()
    current = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'  # the ETag FileResponse sends
    if validator == current:  # strong comparison: a weak tag never matches
        return request
    headers = request.headers.copy()
    del headers[hdrs.RANGE]
    del headers[hdrs.IF_RANGE]
    return request.clone(headers=headers)
