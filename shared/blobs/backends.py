"""Opening the blob store a configuration names: a local directory (`shared.blobs.store`) or an
object store (`shared.blobs.objects`).

It sits above both backends and their configuration (`shared.blobs.config`), so the configuration
imports no backend and no backend imports this module.
"""

from __future__ import annotations

from shared.blobs.config import StoreConfig, check_config
from shared.blobs.objects import ObjectBlobStore
from shared.blobs.signed_reads import SignedReads
from shared.blobs.store import BlobStore, LocalBlobStore


def open_store(config: StoreConfig, reads: SignedReads | None = None) -> BlobStore:
    """The blob store a configuration names: a LocalBlobStore or an ObjectBlobStore (whose S3
    ranges are read through `reads` when given, else through obstore).

    Raises BadRequest for a configuration that cannot work, StoreError when the backend refuses
    it. Nothing is contacted yet: `check_writable()` does that.
    """
    check_config(config)
    if config.kind == "local":
        return LocalBlobStore(config.path)
    return ObjectBlobStore(config, reads)
