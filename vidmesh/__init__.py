"""vidmesh command line: `vidmesh up` (the supervisor, with its embedded nats-server), each
service on its own, backup and restore of JetStream, schema generation. CLI-only code lives here,
not in `shared/`."""
