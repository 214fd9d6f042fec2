"""Back up and restore a namespace's JetStream state with JetStream's own snapshot API.

A backup is a folder: `manifest.json` (namespace, time, each stream's size and SHA-256) and, per
stream, `<stream>.json` (its configuration and state when the snapshot was taken) and
`<stream>.snapshot` (the server's snapshot: messages, KV revisions and consumer state, as the
server wrote it). A restore gives JetStream those snapshots back, so sequences, revisions and
consumers are exactly as they were; it refuses a namespace that still has any of its streams.
Blobs (finished outputs) live in the blob store and are backed up with its own tooling.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from shared.nats.subjects import Names

CHUNK = 128 * 1024
FORMAT = 1


class BackupError(Exception):
    """The backup or restore could not be done; the message says why."""


@dataclass(frozen=True)
class StreamCopy:
    stream: str
    size: int
    sha256: str


async def _ask(nc: NATS, subject: str, payload: bytes = b"", timeout: float = 30.0) -> Any:
    """A JetStream API answer (JSON), an error answer included."""
    reply = await nc.request(subject, payload, timeout=timeout)
    return json.loads(reply.data or b"{}")


def _ok(answer: Any, what: str) -> Any:
    if "error" in answer:
        error = answer["error"]
        raise BackupError(f"{what}: {error.get('description', error)}")
    return answer


async def _api(nc: NATS, subject: str, body: dict[str, Any]) -> Any:
    return _ok(await _ask(nc, subject, json.dumps(body).encode()), subject)


async def _exists(nc: NATS, stream: str) -> bool:
    answer = await _ask(nc, f"$JS.API.STREAM.INFO.{stream}", timeout=10)
    if answer.get("error", {}).get("code") == 404:
        return False
    _ok(answer, f"stream {stream}")
    return True


async def snapshot(nc: NATS, stream: str, folder: Path) -> StreamCopy:
    """Write one stream's snapshot into `folder`; chunks are acknowledged as they are written."""
    inbox = nc.new_inbox()
    chunks: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_chunk(msg: Msg) -> None:
        await chunks.put(msg)

    sub = await nc.subscribe(inbox, cb=on_chunk)
    digest = hashlib.sha256()
    size = 0
    try:
        request = {"deliver_subject": inbox, "chunk_size": CHUNK, "jsck": False}
        answer = await _api(nc, f"$JS.API.STREAM.SNAPSHOT.{stream}", request)
        described = {"config": answer["config"], "state": answer["state"]}
        (folder / f"{stream}.json").write_text(json.dumps(described, indent=2))
        with (folder / f"{stream}.snapshot").open("wb") as out:
            while True:
                msg = await asyncio.wait_for(chunks.get(), 60)
                headers = msg.headers or {}
                status = headers.get("Status")
                if not msg.data and status in (None, "204"):
                    break  # the end of the snapshot (204 after a multi-chunk one)
                if not msg.data and status != "100":
                    reason = headers.get("Description", "")
                    raise BackupError(f"snapshot of {stream} ended with {status} {reason}".strip())
                if msg.data:
                    out.write(msg.data)
                    digest.update(msg.data)
                    size += len(msg.data)
                if msg.reply:
                    await nc.publish(msg.reply, b"")  # flow control: this chunk arrived
    finally:
        await sub.unsubscribe()
    return StreamCopy(stream, size, digest.hexdigest())


async def backup(nc: NATS, names: Names, folder: Path) -> list[StreamCopy]:
    """Snapshot every stream of the namespace that exists into `folder` (made if needed)."""
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    copies = [
        await snapshot(nc, stream, folder)
        for stream in names.all_streams()
        if await _exists(nc, stream)
    ]
    manifest = {
        "format": FORMAT,
        "namespace": names.namespace,
        "taken_at": time.time(),
        "streams": [c.__dict__ for c in copies],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return copies


def _digest(path: Path) -> tuple[int, str]:
    """Size and SHA-256 of a file, read in chunks."""
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def read_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{folder} holds no readable vidmesh backup: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{folder}: backup format {manifest.get('format')} is not {FORMAT}")
    return manifest


async def restore(
    nc: NATS, names: Names, folder: Path, *, replace: bool = False
) -> list[StreamCopy]:
    """Give JetStream every stream of the backup back. The namespace must have none of them,
    unless `replace`: then the namespace's streams are deleted first (stop the services)."""
    manifest = read_manifest(folder)
    if manifest["namespace"] != names.namespace:
        raise BackupError(
            f"the backup is of namespace {manifest['namespace']!r}, not {names.namespace!r}"
        )
    copies = [StreamCopy(**entry) for entry in manifest["streams"]]
    for copy in copies:
        if _digest(folder / f"{copy.stream}.snapshot") != (copy.size, copy.sha256):
            raise BackupError(f"{copy.stream}.snapshot does not match the manifest")
    if replace:
        for stream in names.all_streams():
            if await _exists(nc, stream):
                await _api(nc, f"$JS.API.STREAM.DELETE.{stream}", {})
    present = [c.stream for c in copies if await _exists(nc, c.stream)]
    if present:
        raise BackupError(
            f"these streams exist already: {', '.join(present)}. Stop every vidmesh service, "
            "then restore with --replace (or into an empty NATS)."
        )
    for copy in copies:
        described = json.loads((folder / f"{copy.stream}.json").read_text())
        answer = await _api(nc, f"$JS.API.STREAM.RESTORE.{copy.stream}", described)
        target = answer["deliver_subject"]
        with (folder / f"{copy.stream}.snapshot").open("rb") as snapshot_file:
            while chunk := snapshot_file.read(CHUNK):
                await nc.request(target, chunk, timeout=30)
        _ok(await _ask(nc, target, timeout=120), f"restoring {copy.stream}")  # the end
    return copies
