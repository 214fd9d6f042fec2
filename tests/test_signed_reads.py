"""S3 ranges read over a signed URL in the caller's event loop (shared.blobs.signed_reads), the
way the gateway reads the downloads it proxies, against the session's real SeaweedFS: the same
bytes, errors and end-of-blob answers as the obstore read of tests/test_blobstores.py, and an
abandoned read (a download whose client went away) holds no connection to the store."""

from __future__ import annotations

import contextlib
import os
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
import pytest_asyncio

from shared.blobs.backends import open_store
from shared.blobs.config import StoreConfig
from shared.blobs.signed_reads import SignedReads
from shared.blobs.store import BlobStore
from shared.errors import NotFound, StoreError
from tests.blob_ranges import MIB, check_ranges, read_all
from tests.harness import BUCKET, eventually, free_ports
from tests.storage_servers import SeaweedS3

pytestmark = pytest.mark.slow  # SeaweedFS is a server the session starts


@pytest_asyncio.fixture
async def reads() -> AsyncIterator[SignedReads]:
    signed = SignedReads()
    yield signed
    await signed.close()


@pytest.fixture
def config(seaweed: SeaweedS3) -> StoreConfig:
    return seaweed.config(BUCKET, f"t-{uuid.uuid4().hex[:10]}/signed")


async def stored(store: BlobStore, tmp_path: Path, size: int) -> tuple[str, bytes]:
    data = random.Random(size).randbytes(size)
    source = tmp_path / "blob.bin"
    source.write_bytes(data)
    return (await store.put_file("outputs/blob.bin", source)).key, data


def sockets_open() -> int:
    return sum(1 for fd in os.listdir("/proc/self/fd") if _link(fd).startswith("socket:"))


def _link(fd: str) -> str:
    with contextlib.suppress(OSError):
        return os.readlink(f"/proc/self/fd/{fd}")
    return ""


async def test_signed_reads_stream_exactly_the_bytes_asked_for(
    config: StoreConfig, reads: SignedReads, tmp_path: Path
) -> None:
    store = open_store(config, reads)
    key, data = await stored(store, tmp_path, 3 * MIB + 17)
    n = len(data)

    await check_ranges(store, key, data)
    assert (await read_all(store, key, n, n + 100))[0] == b""  # starting at the end: nothing
    with pytest.raises(NotFound):
        await read_all(store, "outputs/missing.bin", 0, 10)


async def test_signed_read_errors_say_why_like_the_stores_own(
    config: StoreConfig, reads: SignedReads, tmp_path: Path
) -> None:
    key, _ = await stored(open_store(config), tmp_path, 1000)

    wrong = open_store(msgspec.structs.replace(config, secret_access_key="not-the-secret"), reads)
    with pytest.raises(StoreError) as refused:
        await read_all(wrong, key, 0, 10)
    assert refused.value.retryable_now is False
    assert refused.value.message.startswith(f"The store {wrong.name} refused the credentials (403")
    assert "not-the-secret" not in refused.value.message + str(refused.value.details)

    no_bucket = open_store(msgspec.structs.replace(config, bucket="no-such-bucket"), reads)
    with pytest.raises(StoreError) as missing:
        await read_all(no_bucket, key, 0, 10)
    assert missing.value.retryable_now is False
    assert missing.value.message.startswith(f"The store {no_bucket.name} has no such bucket (404")

    closed = f"http://127.0.0.1:{free_ports(1)[0]}"
    gone = open_store(msgspec.structs.replace(config, endpoint=closed, max_retries=1), reads)
    with pytest.raises(StoreError) as unreachable:
        await read_all(gone, key, 0, 10)
    assert unreachable.value.retryable_now is True
    assert unreachable.value.message == f"The store {gone.name} could not be reached."
    assert "X-Amz-Signature" not in str(unreachable.value.details)  # the signed URL stays inside


async def test_an_abandoned_read_holds_no_connection_to_the_store(
    config: StoreConfig, reads: SignedReads, tmp_path: Path
) -> None:
    store = open_store(config, reads)
    key, data = await stored(store, tmp_path, 8 * MIB)
    assert (await read_all(store, key, 0, 10))[0] == data[:10]  # the pool holds a connection
    before = sockets_open()

    for _ in range(5):  # a client that goes away after the first chunk, five times over
        read = store.read_range(key, 0, len(data))
        async with contextlib.aclosing(read):
            assert data.startswith(await anext(read))
        # what was left unread is not kept: the connection it came on is closed

    await eventually(lambda: sockets_open() <= before, what="the abandoned reads' sockets closed")
    assert (await read_all(store, key, 5, 15))[0] == data[5:15]  # and reading still works
