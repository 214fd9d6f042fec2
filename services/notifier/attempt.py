"""One signed delivery attempt (Standard Webhooks): a POST of the delivery's body with the headers
`webhook-id` (the delivery id, the same on every retry), `webhook-timestamp` (the attempt, in Unix
seconds) and `webhook-signature` ("v1,<base64 HMAC-SHA256 of id.timestamp.body>"), and the
record kept of it: the URL and headers sent (the signature, never the secret) and what came
back."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
from standardwebhooks import Webhook

from shared.messages.webhooks import Delivery, DeliveryAttempt
from shared.outbound import Exchange, OutboundClient, OutboundRefused

USER_AGENT = "vidmesh-webhooks/1"
# The latest attempts a delivery keeps (older ones are only counted).
ATTEMPTS_KEPT = 25
RESPONSE_EXCERPT = 512


def signed_headers(secret: str, message_id: str, at: datetime, payload: str) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt."""
    return {
        "Content-Type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, at, payload),
    }


@dataclass(frozen=True, slots=True)
class Attempted:
    """One attempt: the headers sent, the answer (if any), and the record kept of it."""

    headers: dict[str, str]
    exchange: Exchange | None
    record: DeliveryAttempt

    @property
    def succeeded(self) -> bool:
        return self.exchange is not None and 200 <= self.exchange.status < 300


async def attempt(
    client: OutboundClient,
    url: str,
    secret: str,
    message_id: str,
    payload: str,
    *,
    timeout: float,
    manual: bool = False,
) -> Attempted:
    """POST one signed delivery; never raises for what the receiver or the network did. The
    record keeps the URL and every header sent (the client's User-Agent too)."""
    now = datetime.now(UTC)
    headers = signed_headers(secret, message_id, now, payload)
    sent = {"User-Agent": client.user_agent, **headers}
    started = time.monotonic()
    exchange: Exchange | None = None
    error = ""
    try:
        exchange = await client.request(
            "POST", url, headers=headers, body=payload.encode(), timeout=timeout
        )
    except OutboundRefused as exc:
        error = exc.message
    except TimeoutError:
        error = f"no answer within {timeout:g} s"
    except aiohttp.ClientError as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    except Exception as exc:  # a receiver's answer we cannot follow (a malformed Location...)
        error = f"{type(exc).__name__}: {exc}"
    if exchange is not None and not 200 <= exchange.status < 300:
        error = f"HTTP {exchange.status}"
    record = DeliveryAttempt(
        at=now.timestamp(),
        duration_ms=round((time.monotonic() - started) * 1000, 1),
        status_code=exchange.status if exchange else None,
        error=error,
        response=exchange.body[:RESPONSE_EXCERPT].decode(errors="replace") if exchange else "",
        manual=manual,
        url=url,
        request_headers=sent,
    )
    return Attempted(headers=sent, exchange=exchange, record=record)


def keep_attempt(delivery: Delivery, record: DeliveryAttempt) -> list[DeliveryAttempt]:
    """The delivery's attempts with `record` added (the latest ATTEMPTS_KEPT)."""
    return [*delivery.attempts, record][-ATTEMPTS_KEPT:]
