"""Live event feeds: the hub (one subscription to the events stream), one connection per
client, who may see which event, and the two carriers (SSE and WebSocket)."""
