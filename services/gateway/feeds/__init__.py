"""Live event feeds: the hub (one subscription to the events stream), each feed's place in it
(subscriber: its queue, and the hub's direct writes), one connection per client, who may see which
event, running jobs' live progress for the feeds that ask for it (progress), and the two carriers
(SSE and WebSocket)."""
