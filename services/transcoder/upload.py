"""Upload an output while ffmpeg writes it, for containers written strictly front to back.

ffmpeg writes into a named pipe; the bytes go on to the store's writer (a multipart upload that
hashes what it sends) as they arrive. ffmpeg treats a FIFO as a non-seekable output, so a muxer
that would go back to patch earlier bytes refuses it at once instead of producing a broken file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from shared.blobs.store import BlobWriter, StoredBlob

# what the pipe reader buffers before it stops reading (and ffmpeg waits on its next write)
_READ_LIMIT = 1 << 20


class OutputTooLarge(Exception):
    """The output reached the upload's byte limit: nothing more was sent, and the upload must be
    aborted (ffmpeg's own -fs does not stop every muxer writing into a pipe)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"the output reached {max_bytes} bytes")
        self.max_bytes = max_bytes


class PipeUpload:
    """A named pipe at `path` whose bytes go to `writer` while they are written.

    Use: `await start()`, run ffmpeg with `path` as its output while awaiting `pumping` beside
    it, then `await finish()` once ffmpeg exited 0, or `await abort()` on any failure. An output
    that reaches `max_bytes` ends `pumping` with OutputTooLarge, its last chunk unsent.
    """

    def __init__(self, path: Path, writer: BlobWriter, *, max_bytes: int | None = None) -> None:
        self.path = path
        self._writer = writer
        self.max_bytes = max_bytes
        self.sent = 0  # bytes handed to the store so far
        self._hold: int | None = None
        self._transport: asyncio.ReadTransport | None = None
        self._finished = False
        self.pumping: asyncio.Task[int] | None = None

    async def start(self) -> None:
        self.path.unlink(missing_ok=True)
        os.mkfifo(self.path, 0o600)
        read_fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        # A writer end of our own keeps the pipe from reading as ended before ffmpeg opens it,
        # and until ffmpeg has exited; closing it then lets the reader see the end.
        self._hold = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        reader = asyncio.StreamReader(limit=_READ_LIMIT)
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
        )
        self.pumping = asyncio.create_task(self._pump(reader))

    async def _pump(self, reader: asyncio.StreamReader) -> int:
        # the store's writer buffers up to its part size, so each chunk goes on as it comes
        while chunk := await reader.read(_READ_LIMIT):
            if self.max_bytes is not None and self.sent + len(chunk) >= self.max_bytes:
                raise OutputTooLarge(self.max_bytes)
            await self._writer.write(chunk)
            self.sent += len(chunk)
        return self.sent

    async def finish(self) -> StoredBlob:
        """ffmpeg is done: send what is left and complete the upload."""
        assert self.pumping is not None, "start() first"
        self._release()
        try:
            await self.pumping
        except BaseException:
            await asyncio.shield(self.abort())
            raise
        self._close()
        stored = await self._writer.close()
        self._finished = True
        return stored

    async def abort(self) -> None:
        """Stop pumping and discard the upload; nothing to do once finished."""
        if self._finished:
            return
        self._release()
        if self.pumping is not None:
            self.pumping.cancel()
            with contextlib.suppress(BaseException):
                await self.pumping
        self._close()
        await self._writer.abort()

    def _release(self) -> None:
        if self._hold is not None:
            os.close(self._hold)
            self._hold = None

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self.path.unlink(missing_ok=True)
