"""The NATS wiring every service shares.

- `client`: connecting (credentials, TLS, cluster URLs) and publishing safely twice;
- `topology`: the streams and KV buckets of a namespace, ensured once, and publishing to them;
- `subjects`: every subject, stream and bucket name (`Names`), so none is spelled in a handler;
- `kv`: typed KV records with compare-and-set (`TypedKV`, `Versioned`);
- `projection`: an in-memory copy of a bucket kept current by a watch (`Projection`);
- `consumer`: the consumer kit (bounded intake from a pull consumer, one place that settles);
- `slots`: the kit's slot loops (fetch, decode, handle, settle);
- `in_order`: folding a stream in order a batch at a time, one ack per batch;
- `lead`: one holder at a time of a named lead, for work replicas must not do side by side;
- `packed`: how a projection holds its records (decoded, or packed: compressed JSON);
- `handler`: a handler's shape (`Received`, `Settle`) and how a settlement is carried out;
- `leases`: the pools' dispatch leases, one KV key per slot.

The main names are re-exported here; code inside vidmesh imports from the module that defines them.
"""

from shared.nats.client import connect_with
from shared.nats.kv import TypedKV, Versioned
from shared.nats.projection import Projection
from shared.nats.subjects import Names
from shared.nats.topology import Buckets, ensure_topology

__all__ = [
    "Buckets",
    "Names",
    "Projection",
    "TypedKV",
    "Versioned",
    "connect_with",
    "ensure_topology",
]
