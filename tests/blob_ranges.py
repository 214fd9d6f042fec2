"""What every blob store's range reads must give, for the tests of each store and read path:
exactly the bytes asked for, for each kind of range, streamed in more than one chunk when large."""

from __future__ import annotations

from shared.blobs.store import BlobStore

MIB = 1 << 20


async def read_all(store: BlobStore, key: str, start: int, end: int) -> tuple[bytes, int]:
    """The bytes [start, end) of `key` and the number of chunks they came in."""
    chunks = [chunk async for chunk in store.read_range(key, start, end)]
    return b"".join(chunks), len(chunks)


async def check_ranges(store: BlobStore, key: str, data: bytes) -> None:
    """Every kind of range of `key`, stored with `data` (over 2 MiB), reads exactly."""
    n = len(data)
    assert (await read_all(store, key, 0, n))[0] == data
    assert (await read_all(store, key, n - 1, n))[0] == data[-1:]  # the last byte
    middle, chunks = await read_all(store, key, 1000, 1000 + 2 * MIB + 3)
    assert middle == data[1000 : 1000 + 2 * MIB + 3] and chunks > 1  # streamed, not one blob
    assert (await read_all(store, key, 7, 7))[0] == b""
    assert (await read_all(store, key, n - 10, n + 100))[0] == data[-10:]  # past the end: the rest
