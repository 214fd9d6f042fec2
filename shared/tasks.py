"""Stopping asyncio tasks for good: the one helper every loop, consumer and projection uses to
cancel what it started; and running several side by side until every one has ended.

A leaf module (it imports nothing of vidmesh), so the NATS wiring in `shared.nats` and the service
lifecycle in `shared.runtime` can both use it without importing each other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import structlog

log = structlog.get_logger("vidmesh.runtime")


async def stop_tasks(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel the tasks and wait for them, cancelling again any that ignored it: on Python 3.11
    a cancellation that lands as an inner `wait_for` (nats-py requests) completes is lost."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
        if pending:
            log.warning("tasks.cancel_ignored", tasks=[t.get_name() for t in pending])
    await asyncio.gather(*tasks, return_exceptions=True)


async def all_ended(*steps: Awaitable[object]) -> None:
    """Run `steps` side by side; once every one has ended, raise the first one's error, if any
    (none is left running behind a failure, as with a plain gather)."""
    for outcome in await asyncio.gather(*steps, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome
