"""What every vidmesh service shares, by concern; it imports no service and has no import circle.

- `nats/`: the NATS wiring (client, topology, subjects, typed KV and read-only views, projections,
  the consumer kit and a handler's shape, pool leases);
- `jobs/`: the job and rendition state machine, the record store, record-to-event builders;
- `messages/`: the msgspec wire types (records, commands, work items, events);
- `media/`: presets, probing, planning, ffmpeg argv and runner, capabilities, pipelines;
- `blobs/`: blob stores (local, object stores), their configuration, users' sealed stores;
- `webhooks/`: what the gateway's faces and the notifier share about webhooks;
- top-level modules: `config` (typed settings), `logging`, `errors` (errors as types), `outbound`
  (the outbound policy), `sources`, `fleet` (the fleet's KV records: pools, settings, live
  transcoders, sessions, capability probes), `cardinality` (distinct counts in bounded space),
  `gpu` (reading the GPUs) with `_gpuhealth` (GPU health as data, and its verdict), `metrics`,
  `runtime` (a service's lifecycle and entry point), and three leaves that import nothing of
  vidmesh: `wire` (JobError), `tasks` and `recent` (a map that keeps its latest entries).
"""
