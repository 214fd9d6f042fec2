"""How a projection holds its records: as decoded Structs (`Plain`), or packed (`Packed`), each
record's JSON deflated against a preset dictionary of sample records and decoded again on read,
with the records decoded or changed last kept decoded too.

A job record decodes to about 4 KiB of Python objects, and its JSON (every field, nulls included)
is about 2.5 KiB; deflated against a dictionary that already holds the field names and the shapes
of the values it is about 0.4 KiB. A gateway holds every job ever kept, so `Packed` is what keeps
its memory from growing with history; a read costs a decompression and a decode (~10 µs) unless
the record is among the `recent` ones.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Generic, Protocol, TypeVar

import msgspec

from shared.nats.kv import Versioned

T = TypeVar("T", bound=msgspec.Struct)

# Raw deflate with the largest window: the dictionary and a record must fit in it together.
_WBITS = -15
_WINDOW = 32 * 1024
_LEVEL = 6
# Records kept decoded by a `Packed` store: those read or changed last.
RECENT = 512
# A packed record's revision follows it, in this many bytes (little-endian): cheaper than an
# int and a holder beside it.
_REVISION = 8


class Packing(Generic[T]):
    """A record type's packed form: its JSON, deflated against a dictionary made of `samples`
    (records of every shape the type takes: the field names and the usual values are then
    found in the dictionary instead of being stored again with every record)."""

    def __init__(self, type_: type[T], samples: Iterable[T]) -> None:
        self.type = type_
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(type_)
        zdict = b"".join(self._encoder.encode(sample) for sample in samples)[-_WINDOW // 2 :]
        # copied for each record: cheaper than setting the dictionary up again
        self._deflate = zlib.compressobj(
            _LEVEL, zlib.DEFLATED, _WBITS, 8, zlib.Z_DEFAULT_STRATEGY, zdict
        )
        self._inflate = zlib.decompressobj(_WBITS, zdict)

    def encode(self, value: T) -> bytes:
        return self._encoder.encode(value)

    def decode(self, data: bytes) -> T:
        """A record from its JSON (as the bucket stores it)."""
        return self._decoder.decode(data)

    def pack(self, data: bytes) -> bytes:
        """A record's JSON, packed."""
        deflate = self._deflate.copy()
        return deflate.compress(data) + deflate.flush()

    def unpack(self, packed: bytes | memoryview) -> T:
        """The record `pack` packed."""
        return self._decoder.decode(self._inflate.copy().decompress(packed))


class Records(Protocol[T]):
    """Records by key, with their revisions, as a projection holds them."""

    def versioned(self, key: str) -> Versioned[T] | None: ...

    def get(self, key: str) -> T | None: ...

    def revision(self, key: str) -> int | None: ...

    def is_current(self, key: str, record: T) -> bool:
        """Whether `record` is the very object held for `key` (not an older or another copy)."""
        ...

    def put(self, key: str, value: T, revision: int, data: bytes | None = None) -> None:
        """Hold `value` (whose JSON, when known, is `data`) at `revision`."""
        ...

    def pop(self, key: str) -> None: ...

    def keys(self) -> list[str]: ...

    def items(self) -> Iterator[tuple[str, T]]: ...

    def __len__(self) -> int: ...


class Plain(Generic[T]):
    """Records kept decoded, by key, with their revisions."""

    def __init__(self) -> None:
        self._records: dict[str, Versioned[T]] = {}

    def versioned(self, key: str) -> Versioned[T] | None:
        return self._records.get(key)

    def get(self, key: str) -> T | None:
        found = self._records.get(key)
        return found.value if found else None

    def revision(self, key: str) -> int | None:
        found = self._records.get(key)
        return found.revision if found else None

    def is_current(self, key: str, record: T) -> bool:
        found = self._records.get(key)
        return found is not None and found.value is record

    def put(self, key: str, value: T, revision: int, data: bytes | None = None) -> None:
        self._records[key] = Versioned(value, revision)

    def pop(self, key: str) -> None:
        self._records.pop(key, None)

    def keys(self) -> list[str]:
        return list(self._records)

    def items(self) -> Iterator[tuple[str, T]]:
        return ((k, v.value) for k, v in list(self._records.items()))

    def __len__(self) -> int:
        return len(self._records)


class Packed(Generic[T]):
    """Records kept packed (see `Packing`); the last `recent` decoded or changed kept decoded."""

    def __init__(self, packing: Packing[T], recent: int = RECENT) -> None:
        self.packing = packing
        # key -> the record packed, then its revision
        self._packed: dict[str, bytes] = {}
        # key -> the record held for it, decoded; always the current one (dropped on change).
        # Ordered: popping the oldest of a dict that loses its first entries over and over gets
        # slower with every one (its iteration skips the holes).
        self._decoded: OrderedDict[str, T] = OrderedDict()
        self._recent = recent

    def versioned(self, key: str) -> Versioned[T] | None:
        record = self.get(key)
        revision = self.revision(key)
        return None if record is None or revision is None else Versioned(record, revision)

    def get(self, key: str) -> T | None:
        found = self._decoded.get(key)
        if found is not None:
            return found
        held = self._packed.get(key)
        return None if held is None else self._decode(key, held)

    def revision(self, key: str) -> int | None:
        held = self._packed.get(key)
        return None if held is None else int.from_bytes(held[-_REVISION:], "little", signed=True)

    def is_current(self, key: str, record: T) -> bool:
        return self._decoded.get(key) is record

    def put(self, key: str, value: T, revision: int, data: bytes | None = None) -> None:
        packing = self.packing
        packed = packing.pack(packing.encode(value) if data is None else data)
        self._packed[key] = packed + revision.to_bytes(_REVISION, "little", signed=True)
        self._decoded.pop(key, None)
        self._keep(key, value)

    def pop(self, key: str) -> None:
        self._packed.pop(key, None)
        self._decoded.pop(key, None)

    def keys(self) -> list[str]:
        return list(self._packed)

    def items(self) -> Iterator[tuple[str, T]]:
        # decoded without being kept: a walk over every record would push out the recent ones
        unpack, decoded = self.packing.unpack, self._decoded
        for key, held in list(self._packed.items()):
            found = decoded.get(key)
            yield key, unpack(memoryview(held)[:-_REVISION]) if found is None else found

    def __len__(self) -> int:
        return len(self._packed)

    def _decode(self, key: str, held: bytes) -> T:
        record = self.packing.unpack(memoryview(held)[:-_REVISION])
        self._keep(key, record)
        return record

    def _keep(self, key: str, record: T) -> None:
        decoded = self._decoded
        if len(decoded) >= self._recent:
            decoded.popitem(last=False)  # the one decoded or changed longest ago
        decoded[key] = record
