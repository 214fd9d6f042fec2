"""What every vidmesh service shares: configuration, logging, NATS wiring, message types, the
job state machine, storage backends and the media layer."""
