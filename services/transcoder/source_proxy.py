"""The forward proxy every connection a source's probe and ffmpeg make goes through.

ffmpeg and PyAV follow redirects themselves, and HLS/DASH playlists name further URLs, so
checking the first URL is not enough. Each attempt (and each probe) runs its own proxy on
127.0.0.1; ffmpeg gets `-http_proxy` and PyAV `options={"http_proxy": ...}`. For every request
(absolute-form GET for http, CONNECT for https) the proxy resolves the host, checks each address
against the outbound policy and connects to an address it checked, so neither a redirect, a
playlist nor a name that resolves elsewhere later (DNS rebinding) reaches a refused address.

One proxy per attempt, not per transcoder: what it refused belongs to that attempt without any
bookkeeping by connection, and nothing outlives the attempt. It allows nothing the policy does
not, so another local process that finds the port gains nothing it could not do directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from ipaddress import ip_address
from types import TracebackType
from typing import Any, Self, TypeVar

import structlog
from yarl import URL

from services.transcoder.tls_origin import TLSOrigin
from shared.errors import SourceError
from shared.media.failures import UNTRUSTED_REASON
from shared.media.inputs import SourceTLS, ffmpeg_env, ffmpeg_input_options, probe_options
from shared.outbound import ALLOW_HINT, METADATA_HOSTS, OutboundPolicy
from shared.wire import JobError

log = structlog.get_logger("vidmesh.transcoder")

HEAD_LIMIT = 16 * 1024  # request line and headers
HEAD_SECONDS = 30.0  # a client that sends no complete request head in this long is dropped
CONNECT_SECONDS = 10.0
_CHUNK = 64 * 1024
# headers for the proxy itself, or for one hop: never forwarded
_HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "upgrade"}
)


T = TypeVar("T")


class SourceRefused(Exception):
    """The source led the probe or ffmpeg to an address the policy refuses."""

    def __init__(self, address_class: str) -> None:
        hint = "" if "metadata" in address_class else f" ({ALLOW_HINT})"
        refused = f"The source led to {address_class}, which the outbound policy refuses"
        self.reason = refused + hint + "."
        super().__init__(self.reason)

    @property
    def error(self) -> JobError:
        """The job failure: `source_refused`, not retried (the source will lead there again)."""
        return JobError(code="source_refused", reason=self.reason, retryable=False)


class Refused(Exception):
    """The policy refuses every address of the host; `reason` names the address class only."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Unreachable(Exception):
    """The host could not be resolved or connected to."""


class Untrusted(Exception):
    """The server's TLS certificate did not verify (a probe proxy's own TLS to the source)."""


@dataclass
class ProxyLog:
    """What the proxy refused during one attempt."""

    refused: list[str] = field(default_factory=list)  # address classes, in order
    first_refusal: asyncio.Event = field(default_factory=asyncio.Event)
    untrusted: bool = False  # a server's certificate did not verify


@dataclass(frozen=True, slots=True)
class SourceAccess:
    """How this transcoder reads sources: the policy its proxies hold to, how certificates are
    verified, and ffmpeg's environment (without `no_proxy`, with the CA bundle)."""

    policy: OutboundPolicy
    tls: SourceTLS
    environ: dict[str, str]
    origin: TLSOrigin

    @classmethod
    def of(cls, policy: OutboundPolicy, tls: SourceTLS, environ: Mapping[str, str]) -> SourceAccess:
        return cls(policy, tls, ffmpeg_env(tls, environ), TLSOrigin.of(tls))

    def proxy(self) -> SourceProxy:
        """A proxy for one ffmpeg run (start it, or use it with `async with`): ffmpeg verifies
        certificates itself, so https is only tunnelled."""
        return SourceProxy(self.policy)

    def probe_proxy(self) -> SourceProxy:
        """A proxy for PyAV (a probe, or this process's fallback): it verifies the certificates
        of https servers itself, as PyAV does not for the URLs a source leads to."""
        return SourceProxy(self.policy, tls_origin=self.origin)

    def ffmpeg_env(self, proxy: SourceProxy) -> dict[str, str]:
        """ffmpeg's environment for one attempt: `http_proxy` too, which ffmpeg falls back on
        for any connection that was not handed the option."""
        return {**self.environ, "http_proxy": proxy.url}

    def ffmpeg_options(self, source: str, proxy: SourceProxy) -> dict[str, str]:
        return ffmpeg_input_options(source, proxy=proxy.url, tls=self.tls)

    def probe_options(self, source: str, proxy: SourceProxy) -> dict[str, str]:
        return probe_options(source, proxy=proxy.url)


class SourceProxy:
    """An HTTP + CONNECT forward proxy on 127.0.0.1 that only connects where the policy allows."""

    def __init__(
        self,
        policy: OutboundPolicy,
        *,
        connect_timeout: float = CONNECT_SECONDS,
        tls_origin: TLSOrigin | None = None,
    ) -> None:
        self.policy = policy
        self.tls_origin = tls_origin
        self.connect_timeout = connect_timeout
        self.log = ProxyLog()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.url = ""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", 0, limit=HEAD_LIMIT, reuse_address=True
        )
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        """Stop listening and cut every connection still open."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    @property
    def refusal(self) -> str | None:
        """The first address class refused during this attempt, if any."""
        return self.log.refused[0] if self.log.refused else None

    async def guarded(self, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` (a probe, an ffmpeg run) until it ends or this proxy refuses a connection:
        then it is stopped and SourceRefused raised, whatever it would have made of the 403."""
        task = asyncio.ensure_future(work)
        refused = asyncio.ensure_future(self.log.first_refusal.wait())
        try:
            await asyncio.wait({task, refused}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            refused.cancel()
            if not task.done():
                task.cancel()
            await asyncio.gather(task, refused, return_exceptions=True)
        if self.refusal is not None:
            raise SourceRefused(self.refusal)
        if self.log.untrusted and task.exception() is not None:
            raise SourceError(UNTRUSTED_REASON, retryable=False) from task.exception()
        return task.result()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The connection's work runs in a task of its own that `close` cancels: asyncio's task
        # for this callback must end normally (it logs an error for a cancelled one).
        task = asyncio.create_task(self._connection(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await asyncio.wait({task})

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass  # the client went away or sent no usable request: nothing to report
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(HEAD_SECONDS):
            head = await reader.readuntil(b"\r\n\r\n")
        request_line, _, header_block = head.decode("latin-1").partition("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3:
            await _answer(writer, 400, "Bad Request")
            return
        method, target, version = parts
        try:
            host, port, path = _target(method, target)
        except ValueError:
            await _answer(writer, 400, "Bad Request")
            return
        # a probe proxy's CONNECT: its own TLS to the source, verified, and PyAV's TLS ended here
        origin = self.tls_origin if method == "CONNECT" else None
        try:
            up_reader, up_writer = await self._connect(host, port, origin)
        except Untrusted:
            self.log.untrusted = True
            log.warning("source.untrusted")
            await _answer(writer, 502, "Certificate not verified")
            return
        except Refused as exc:
            self.log.refused.append(exc.reason)
            self.log.first_refusal.set()
            log.warning("source.refused", reason=exc.reason)
            await _answer(writer, 403, "Forbidden by the outbound policy")
            return
        except Unreachable:
            # ffmpeg reports a 5xx, a source it tries again later (as a failed resolution was)
            await _answer(writer, 502, "Bad Gateway")
            return
        try:
            if method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
                if origin is not None:
                    await writer.start_tls(origin.local)
            else:
                up_writer.write(_origin_form(method, path, version, header_block))
                await up_writer.drain()
            await _relay(reader, writer, up_reader, up_writer)
        finally:
            up_writer.close()

    async def _connect(
        self, host: str, port: int, origin: TLSOrigin | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to an address of `host` the policy allows, over TLS verified for `host`
        with `origin` (raises Refused/Unreachable/Untrusted)."""
        name = host.strip("[]").rstrip(".").lower()
        trusted = self.policy.is_trusted(name, port)
        if name in METADATA_HOSTS and not trusted:
            raise Refused("a cloud metadata host")
        loop = asyncio.get_running_loop()
        try:
            found = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise Unreachable(str(exc)) from None
        allowed: list[str] = []
        refused: str | None = None
        for family, _, _, _, sockaddr in found:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            address = str(sockaddr[0])
            why = None if trusted else self.policy.refusal(ip_address(address.split("%", 1)[0]))
            if why is None:
                allowed.append(address)
            else:
                refused = refused or why
        if not allowed:
            if refused is not None:
                raise Refused(refused)
            raise Unreachable("no address")
        tls = origin.remote if origin is not None else None
        for address in dict.fromkeys(allowed):
            try:
                async with asyncio.timeout(self.connect_timeout):
                    # the checked address itself: no second resolution that could differ
                    return await asyncio.open_connection(
                        address, port, limit=_CHUNK, ssl=tls, server_hostname=name if tls else None
                    )
            except ssl.SSLCertVerificationError:
                raise Untrusted(name) from None
            except (OSError, TimeoutError):
                continue
        raise Unreachable("connection failed")


def _target(method: str, target: str) -> tuple[str, int, str]:
    """Host, port and origin-form path of a proxy request (ValueError if it is not one)."""
    if method == "CONNECT":
        host, sep, port = target.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(target)
        return host, int(port), ""
    url = URL(target)
    if url.scheme != "http" or not url.raw_host or url.port is None:
        raise ValueError(target)  # only plain http comes as absolute-form; https uses CONNECT
    return url.raw_host, url.port, url.raw_path_qs or "/"


def _origin_form(method: str, path: str, version: str, header_block: str) -> bytes:
    """The request as the origin server expects it: origin-form target, no proxy headers, and
    one request per connection (so every further request comes back here to be checked)."""
    lines = [f"{method} {path} {version}"]
    for line in header_block.split("\r\n"):
        name = line.partition(":")[0].strip().lower()
        if line and name not in _HOP_HEADERS:
            lines.append(line)
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _relay(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    """Copy bytes both ways until the server's side ends; the client's end only half-closes."""
    upload = asyncio.create_task(_copy(reader, up_writer))
    try:
        await _copy(up_reader, writer)
    finally:
        upload.cancel()
        await asyncio.gather(upload, return_exceptions=True)


async def _copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    while chunk := await source.read(_CHUNK):
        sink.write(chunk)
        await sink.drain()
    if sink.can_write_eof():
        with contextlib.suppress(OSError):
            sink.write_eof()


async def _answer(writer: asyncio.StreamWriter, status: int, reason: str) -> None:
    body = f"{status} {reason}\n".encode()
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(OSError):
        await writer.drain()
