"""Message types: KV records, commands, work items and events."""
