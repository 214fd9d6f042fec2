"""The wire vocabulary, one module per family of msgspec types: `records` (what KV holds),
`commands`, `work` (work items), `events` (the public contract), `accounts`, `fleet`, `telemetry`,
`webhooks`, `rpc` (request/reply); `asyncapi` builds the AsyncAPI document from the events.

Messages may carry the media layer's types (presets, probe results, capabilities); the media layer
never imports a message family. What both carry lives in `shared.wire`, which imports nothing of
vidmesh.
"""
