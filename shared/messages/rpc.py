"""Request/reply messages (core NATS, not JetStream): answers a caller waits for."""

from __future__ import annotations

import msgspec

from shared.media.probe import ProbeResult


class ProbeRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Probe a source without transcoding it (answered by any transcoder)."""

    source: str
    # Whose storage credentials read an object source (s3://, gs://, az://).
    owner: str = ""
    # How long the asker waits, in seconds: the probe gives up by then (0: the transcoder's own
    # limit alone).
    timeout: float = 0.0


class ProbeReply(msgspec.Struct, frozen=True, kw_only=True):
    """What the source is, or why it could not be read."""

    probe: ProbeResult | None = None
    error: str = ""
    retryable: bool = False
    # "source_refused": the source led to an address the outbound policy refuses;
    # "timed_out": the source did not answer in time
    code: str = ""


PROBE_REQUEST = msgspec.json.Decoder(ProbeRequest)
PROBE_REPLY = msgspec.json.Decoder(ProbeReply)
ENCODER = msgspec.json.Encoder()
