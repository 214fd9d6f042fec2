"""Blob stores: where finished outputs (and users' own outputs and sources) live.

- `store`: the `BlobStore` interface and the local-directory backend;
- `keys`: the layout of the service store's keys (outputs, parts of split renditions);
- `objects`: S3-compatible stores, Google Cloud Storage and Azure Blob, through obstore;
- `signed_reads`: an S3 store's ranges read over a URL it signs, in the caller's event loop;
- `config`: `StoreConfig`, one typed configuration for every backend, parsed from a store URL;
- `backends`: `open_store`, the store a configuration names;
- `users`: which store an output lives in (`Stores`), and users' sealed storage (`UserStore`);
- `errors`: obstore's errors as `StoreError`s with a reason a user can act on.

The main names are re-exported here; code inside vidmesh imports from the module that defines them.
"""

from shared.blobs.backends import open_store
from shared.blobs.config import StoreConfig, parse_store_url, store_name
from shared.blobs.objects import ObjectBlobStore
from shared.blobs.store import BlobStore, LocalBlobStore
from shared.blobs.users import Stores, UserStore

__all__ = [
    "BlobStore",
    "LocalBlobStore",
    "ObjectBlobStore",
    "StoreConfig",
    "Stores",
    "UserStore",
    "open_store",
    "parse_store_url",
    "store_name",
]
