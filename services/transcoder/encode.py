"""Run ffmpeg for one output under the attempt's watchdog: into a scratch file, or into a pipe
whose bytes go to the store while ffmpeg writes them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import NamedTuple

import msgspec

from services.transcoder.attempt import (
    HardwareFailed,
    TranscodeFailed,
    store_failed,
    uses_hardware,
)
from services.transcoder.limits import RunLimits, Watchdog, output_too_large
from services.transcoder.progress import ProgressReporter
from services.transcoder.source_proxy import SourceProxy, SourceRefused
from services.transcoder.upload import OutputTooLarge, PipeUpload
from shared.blobs.store import BlobStore, StoredBlob
from shared.errors import StoreError
from shared.media import FfmpegProgress, FfmpegResult, classify_failure, run_ffmpeg
from shared.media.pipelines import is_hardware_failure
from shared.sources import scrub
from shared.tasks import stop_tasks


class Proxied(NamedTuple):
    """The attempt's source proxy and the environment ffmpeg runs with to use it."""

    proxy: SourceProxy
    env: dict[str, str]


async def encode(
    argv: list[str], reporter: ProgressReporter, watchdog: Watchdog, proxy: Proxied
) -> FfmpegResult:
    """Run ffmpeg to its end, its connections through the attempt's `proxy`; a limit the
    watchdog sees passed stops it at once (TranscodeFailed with that limit's error), as do a
    connection the proxy refuses and an output cut by `-fs` once ffmpeg exited."""

    def on_progress(report: FfmpegProgress) -> None:
        watchdog.saw(report)
        reporter.on_ffmpeg(report)

    run = run_ffmpeg(argv, on_progress=on_progress, env=proxy.env)
    ffmpeg = asyncio.create_task(proxy.proxy.guarded(run))
    watching = asyncio.create_task(watchdog.run())
    try:
        racers: set[asyncio.Future[object]] = {ffmpeg, watching}  # type: ignore[arg-type]
        await asyncio.wait(racers, return_when=asyncio.FIRST_COMPLETED)
        if not ffmpeg.done():
            raise TranscodeFailed(watching.result())
        try:
            result = ffmpeg.result()
        except SourceRefused as exc:
            raise TranscodeFailed(exc.error) from exc
    finally:
        # cancelling run_ffmpeg kills ffmpeg and waits for it
        await stop_tasks([ffmpeg, watching])
    if result.returncode != 0:
        if uses_hardware(argv) and is_hardware_failure(result.stderr_tail):
            raise HardwareFailed(result.stderr_tail)
        error = classify_failure(result.stderr_tail, result.returncode)
        raise TranscodeFailed(msgspec.structs.replace(error, detail=scrub(error.detail)))
    cut = watchdog.after_exit()
    if cut is not None:
        raise TranscodeFailed(cut)
    reporter.stage("storing")
    return result


async def encode_to_file(
    argv: list[str], out: Path, reporter: ProgressReporter, limits: RunLimits, proxy: Proxied
) -> FfmpegResult:
    """Run ffmpeg into the scratch file `out` (the caller stores and removes it)."""
    return await encode(argv, reporter, Watchdog(limits, output=out), proxy)


async def encode_streaming(
    argv: list[str],
    out: Path,
    store: BlobStore,
    key: str,
    reporter: ProgressReporter,
    limits: RunLimits,
    proxy: Proxied,
) -> tuple[FfmpegResult, StoredBlob]:
    """Run ffmpeg into a pipe whose bytes go to the store as they are written (multipart,
    hashed on the way); a store that fails stops ffmpeg, and a failed ffmpeg or an output that
    reaches the size limit aborts the upload, so nothing half-written is left as the output."""
    try:
        upload = PipeUpload(out, await store.writer(key), max_bytes=limits.max_output_bytes)
    except StoreError as exc:
        raise store_failed(exc) from exc
    await upload.start()
    assert upload.pumping is not None
    watchdog = Watchdog(limits, sent=lambda: upload.sent)
    encoding = asyncio.create_task(encode(argv, reporter, watchdog, proxy))
    try:
        racers: set[asyncio.Future[object]] = {encoding, upload.pumping}  # type: ignore[arg-type]
        await asyncio.wait(racers, return_when=asyncio.FIRST_COMPLETED)
        if not encoding.done():
            # the pump stops while ffmpeg still writes only on a store error or the size limit
            upload.pumping.result()
        result = encoding.result()
        return result, await upload.finish()
    except StoreError as exc:
        raise store_failed(exc) from exc
    except OutputTooLarge as exc:
        raise TranscodeFailed(output_too_large(exc.max_bytes)) from exc
    finally:
        encoding.cancel()
        await asyncio.gather(encoding, return_exceptions=True)
        await asyncio.shield(upload.abort())  # nothing to undo once finished
