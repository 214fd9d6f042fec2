"""Serving a finished output: Range, If-Range, ETag and 416 as aiohttp's FileResponse does them
(zero-copy sendfile from a local blob), plus the checksum headers resumable clients rely on.

`X-File-Checksum` is the SHA-256 computed once when the output was stored; nothing is hashed per
request. HEAD answers the same headers and changes nothing.
"""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path
from urllib.parse import quote

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter

from services.gateway.state import Gateway
from shared import jobstate
from shared.errors import Conflict, NotFound
from shared.messages.records import JobRecord, JobStatus

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def download_name(job: JobRecord) -> str:
    """The name a client is offered: the job's chosen name, else `<item id or job id>.<ext>`
    (the item id is what Streamyfin saves the file as)."""
    if job.output_name:
        return job.output_name
    base = _SAFE.sub("_", job.item_id or job.id).strip("._") or job.id
    return f"{base}.{job.container}"


def content_disposition(name: str) -> str:
    """An attachment header any client parses: an ASCII fallback, and the UTF-8 name."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    header = f'attachment; filename="{fallback}"'
    if fallback != name:
        header += f"; filename*=UTF-8''{quote(name, safe='')}"
    return header


async def serve_output(gw: Gateway, request: web.Request, job: JobRecord) -> web.StreamResponse:
    """The job's output as a file response, or a clear error when there is none (yet)."""
    if job.output is None or not jobstate.holds_output(job, time.time()):
        if job.status in (JobStatus.QUEUED, JobStatus.HELD, JobStatus.RUNNING):
            raise Conflict(f"Job {job.id} has no output yet: it is still {_word(job)}.")
        raise NotFound(f"Job {job.id} has no output to download (it is {_word(job)}).")
    output = job.output
    path = gw.blobs.local_path(output.blob)
    if path is None or not path.is_file():
        raise NotFound(f"The output of job {job.id} is no longer stored.")
    response = _OutputResponse(path, chunk_size=1 << 20)
    response.content_type = output.mime
    response.headers["Accept-Ranges"] = "bytes"
    response.headers["X-File-Checksum"] = output.sha256
    response.headers["X-File-Size"] = str(output.size)
    response.headers["Digest"] = f"sha-256={_b64(output.sha256)}"
    response.headers["Content-Disposition"] = content_disposition(download_name(job))
    response.headers["Cache-Control"] = "private, no-transform"
    return response


class _OutputResponse(web.FileResponse):
    """FileResponse with RFC 9110 If-Range for entity tags too (aiohttp only compares dates)."""

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        return await super().prepare(_without_stale_range(request, self._path))


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


def _word(job: JobRecord) -> str:
    return job.status.value


def _b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()
