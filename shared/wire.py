"""Leaf wire types: the small msgspec types that both the message families (`shared.messages`)
and the media layer (`shared.media`) carry.

This module imports nothing of vidmesh, so neither of those packages has to import the other to
name them: the media layer says why a run failed with a `JobError`, and the records carry it.
"""

from __future__ import annotations

import msgspec


class JobError(msgspec.Struct, frozen=True, kw_only=True):
    """Why something failed: a stable code, words a user can act on, and the technical detail."""

    code: str
    reason: str
    detail: str = ""
    retryable: bool = False
