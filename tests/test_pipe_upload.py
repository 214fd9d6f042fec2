"""Uploading while ffmpeg writes: bytes reach the store before ffmpeg has finished, the stored
blob is exactly what ffmpeg wrote, and a muxer that needs to seek refuses the pipe at once."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import imageio_ffmpeg

from services.transcoder.upload import PipeUpload
from shared.blobs.store import LocalBlobStore, StoredBlob
from shared.errors import StoreError

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def _argv(output: Path, *, movflags: str, seconds: float = 3.0) -> list[str]:
    """A real-time (-re) test pattern encode, so the output is written over `seconds` seconds."""
    return [
        FFMPEG, "-hide_banner", "-nostdin", "-y", "-loglevel", "error", "-re",
        "-f", "lavfi", "-i", f"testsrc2=size=320x240:rate=25:duration={seconds}",
        "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-f", "mp4",
        "-movflags", movflags, str(output),
    ]  # fmt: skip


class _Recording:
    """A blob writer that records when bytes arrived and can be told to fail."""

    def __init__(self, inner: object, fail_after: int | None = None) -> None:
        self.inner = inner
        self.fail_after = fail_after
        self.arrivals: list[float] = []
        self.aborted = False

    async def write(self, data: bytes) -> None:
        self.arrivals.append(asyncio.get_running_loop().time())
        if self.fail_after is not None and len(self.arrivals) > self.fail_after:
            raise StoreError("The store is full.")
        await self.inner.write(data)  # type: ignore[attr-defined]

    async def close(self) -> StoredBlob:
        return await self.inner.close()  # type: ignore[attr-defined, no-any-return]

    async def abort(self) -> None:
        self.aborted = True
        await self.inner.abort()  # type: ignore[attr-defined]


async def test_a_fragmented_output_is_stored_while_ffmpeg_writes_it(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "store")
    writer = _Recording(await store.writer("out.mp4"))
    upload = PipeUpload(tmp_path / "pipe.mp4", writer)  # type: ignore[arg-type]
    await upload.start()
    ffmpeg = await asyncio.create_subprocess_exec(
        *_argv(upload.path, movflags="+frag_keyframe+empty_moov+default_base_moof", seconds=4)
    )
    assert await ffmpeg.wait() == 0
    ended = asyncio.get_running_loop().time()
    stored = await upload.finish()
    # bytes went out well before ffmpeg was done (it writes over ~4 s in real time)
    assert writer.arrivals and writer.arrivals[0] < ended - 1.0
    data = (tmp_path / "store" / "out.mp4").read_bytes()
    assert stored.size == len(data) > 0 and stored.sha256 == hashlib.sha256(data).hexdigest()
    assert b"moof" in data
    assert not upload.path.exists()


async def test_a_muxer_that_must_seek_back_refuses_the_pipe(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "store")
    writer = _Recording(await store.writer("out.mp4"))
    upload = PipeUpload(tmp_path / "pipe.mp4", writer)  # type: ignore[arg-type]
    await upload.start()
    ffmpeg = await asyncio.create_subprocess_exec(
        *_argv(upload.path, movflags="+faststart", seconds=1),
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await ffmpeg.communicate()
    assert ffmpeg.returncode != 0 and b"seek" in stderr.lower()
    await upload.abort()
    assert writer.aborted and await store.stat("out.mp4") is None


async def test_a_store_that_fails_mid_stream_stops_the_pump_and_keeps_nothing(
    tmp_path: Path,
) -> None:
    store = LocalBlobStore(tmp_path / "store")
    writer = _Recording(await store.writer("out.mp4"), fail_after=0)
    upload = PipeUpload(tmp_path / "pipe.mp4", writer)  # type: ignore[arg-type]
    await upload.start()
    assert upload.pumping is not None
    ffmpeg = await asyncio.create_subprocess_exec(
        *_argv(upload.path, movflags="+frag_keyframe+empty_moov", seconds=30),
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        # the pump fails on the first write, long before this 30 s encode would end
        done, _ = await asyncio.wait({upload.pumping}, timeout=20)
        assert done and isinstance(upload.pumping.exception(), StoreError)
    finally:
        ffmpeg.kill()
        await ffmpeg.wait()
    await upload.abort()
    assert writer.aborted and await store.stat("out.mp4") is None
