"""Translating obstore's errors into `StoreError`s with a reason a user can act on."""

from __future__ import annotations

import re

from obstore.exceptions import PermissionDeniedError, UnauthenticatedError

from shared.errors import StoreError

_STATUS = re.compile(r"(?:status code:|status:|\(code:) (\d{3})")
_CODE = re.compile(r"<Code>([A-Za-z0-9.]{1,64})</Code>|\"reason\": \"([A-Za-z0-9.]{1,64})\"")
_QUERY = re.compile(r"(https?://[^\s?]*)\?\S*")  # a signed URL's query may carry a SAS
_FULL_CODES = {"QuotaExceeded", "InsufficientStorage", "XMinioStorageFull", "StorageFull"}
_BUCKET_CODES = {"NoSuchBucket", "ContainerNotFound", "ContainerBeingDeleted"}
_NETWORK_WORDS = ("error sending request", "connect", "timed out", "timeout", "dns", "reset")


def first_line_without_query(text: str) -> str:
    """An error message's first line, with any signed URL's query (which may carry a SAS)
    dropped, at most 300 characters."""
    return _QUERY.sub(r"\1?…", text.splitlines()[0] if text else "")[:300]


def store_error(name: str, exc: BaseException, doing: str) -> StoreError:
    """A backend error as a StoreError with a reason a user can act on (no secrets, no URLs)."""
    text = str(exc)
    status = http_status(text)
    found = _CODE.search(text)
    code = (found.group(1) or found.group(2)) if found else ""
    detail = first_line_without_query(text) if text else type(exc).__name__
    details = {"operation": doing, "status": status, "code": code, "detail": detail}
    why = " ".join(str(part) for part in (status, code) if part)
    why = f" ({why})" if why else ""
    if status == 507 or code in _FULL_CODES:
        return StoreError(f"The store {name} is full{why}.", details=details)
    if status in (401, 403) or isinstance(exc, PermissionDeniedError | UnauthenticatedError):
        return StoreError(
            f"The store {name} refused the credentials{why}.", retryable=False, details=details
        )
    if code in _BUCKET_CODES or status == 404 or isinstance(exc, FileNotFoundError):
        noun = "container" if name.startswith("az://") else "bucket"
        return StoreError(
            f"The store {name} has no such {noun}{why}.", retryable=False, details=details
        )
    if status is not None and (status >= 500 or status in (408, 409, 429)):
        return StoreError(f"The store {name} is failing right now{why}.", details=details)
    if status is not None:
        return StoreError(
            f"The store {name} refused the request{why}.", retryable=False, details=details
        )
    if any(word in text.lower() for word in _NETWORK_WORDS):
        return StoreError(f"The store {name} could not be reached.", details=details)
    return StoreError(f"The store {name} failed ({type(exc).__name__}).", details=details)


def http_status(text: str) -> int | None:
    """The HTTP status an obstore error message reports, if any."""
    found = _STATUS.search(text)
    return int(found.group(1)) if found else None


def is_absent(exc: BaseException) -> bool:
    """A 404 for the object itself (not for a missing bucket)."""
    return isinstance(exc, FileNotFoundError) and not any(c in str(exc) for c in _BUCKET_CODES)
