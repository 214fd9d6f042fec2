"""Why an ffmpeg run failed, in words: a stable failure code, a sentence a user can act on, and
whether the run is worth trying again (read from the tail of its stderr)."""

from __future__ import annotations

import re

import msgspec

from shared.wire import JobError

_HTTP_STATUS = re.compile(r"Server returned (\d{3}|\dXX)\b([^\r\n]*)")
_NETWORK_TROUBLE = (
    "connection refused",
    "connection timed out",
    "connection reset",
    "network is unreachable",
    "no route to host",
    "operation timed out",
    "failed to resolve hostname",
    "temporary failure in name resolution",
    "name or service not known",
)
UNTRUSTED_REASON = (
    "The source server's TLS certificate could not be verified; if a private CA signed it, "
    "name that CA's bundle in VIDMESH_SOURCE_CA_FILE."
)
# OpenSSL (ffmpeg) and GnuTLS (PyAV) wordings of a certificate that did not verify
_CERTIFICATE_FAILED = (
    "certificate verify failed",
    "certificate is not trusted",
    "error in the certificate verification",
)
_SOURCE_INVALID = {
    "invalid data found when processing input": "it is not a video ffmpeg can read",
    "moov atom not found": "the file is incomplete or damaged (moov atom not found)",
    "does not contain any stream": "it has no video or audio stream",
    "could not find codec parameters": "its streams could not be decoded",
    "decode error rate": "too much of it could not be decoded",
}
_ENCODER_FAILED = (
    "error while opening encoder",
    "openencodesessionex failed",
    "unknown encoder",
    "encoder not found",
    "error applying encoder options",
)


def classify_failure(stderr_tail: str, returncode: int) -> JobError:
    """Name why ffmpeg failed: a stable code, a sentence for the user, and whether to retry."""
    text = stderr_tail.lower()
    http = _HTTP_STATUS.search(stderr_tail)
    if http is not None:
        return _http_failure(http.group(1), (http.group(1) + http.group(2)).strip(), stderr_tail)
    opening_input = "error opening input" in text
    if opening_input and "no such file or directory" in text:
        return JobError(
            code="source_not_found",
            reason="The source could not be read: the file does not exist.",
            detail=stderr_tail,
        )
    if opening_input and "permission denied" in text:
        return JobError(
            code="source_refused",
            reason="The source could not be read: permission denied.",
            detail=stderr_tail,
        )
    if any(p in text for p in _CERTIFICATE_FAILED):
        return JobError(
            code="source_untrusted",
            reason=UNTRUSTED_REASON,
            detail=stderr_tail,
        )
    trouble = next((t for t in _NETWORK_TROUBLE if t in text), None)
    if trouble is not None:
        return JobError(
            code="source_unreachable",
            reason=f"The source server could not be reached ({trouble}); it will be retried.",
            detail=stderr_tail,
            retryable=True,
        )
    if "no space left on device" in text:
        return JobError(
            code="output_failed",
            reason="The output could not be written: no space left on device.",
            detail=stderr_tail,
            retryable=True,
        )
    if "openencodesessionex failed: out of memory" in text:
        # NVENC session cap reached: the node is full, the job is fine elsewhere or later
        return JobError(
            code="encoder_failed",
            reason="The GPU encoder has no free session right now; it will be retried.",
            detail=stderr_tail,
            retryable=True,
        )
    why = next((w for p, w in _SOURCE_INVALID.items() if p in text), None)
    if why is not None:
        return JobError(
            code="source_invalid",
            reason=f"The source could not be transcoded: {why}.",
            detail=stderr_tail,
        )
    if any(p in text for p in _ENCODER_FAILED):
        return JobError(
            code="encoder_failed",
            reason="The encoder could not be opened with this profile's settings on this worker.",
            detail=stderr_tail,
        )
    if "error opening output" in text or "permission denied" in text:
        return JobError(
            code="output_failed",
            reason="The output could not be written; check the work directory.",
            detail=stderr_tail,
        )
    if returncode < 0:
        return JobError(
            code="ffmpeg_failed",
            reason=f"ffmpeg was stopped by signal {-returncode}; it will be retried.",
            detail=stderr_tail,
            retryable=True,
        )
    return JobError(
        code="ffmpeg_failed",
        reason=f"ffmpeg failed with exit code {returncode}.",
        detail=stderr_tail,
    )


def _http_failure(status: str, answer: str, stderr_tail: str) -> JobError:
    if status == "404":
        return JobError(
            code="source_not_found",
            reason=f"The source could not be read: the server answered {answer}.",
            detail=stderr_tail,
        )
    if status in ("401", "403"):
        return JobError(
            code="source_refused",
            reason=f"The source server refused access ({answer}); check the API key.",
            detail=stderr_tail,
        )
    if status.startswith("5") or status == "429":
        return JobError(
            code="source_unreachable",
            reason=f"The source server answered {answer}; it will be retried.",
            detail=stderr_tail,
            retryable=True,
        )
    return JobError(
        code="source_refused",
        reason=f"The source server rejected the request ({answer}); check the source URL.",
        detail=stderr_tail,
    )


RETRIED = "; it will be retried."


def gave_up(error: JobError, attempts: int) -> JobError:
    """A retryable failure that has no attempt left, in words that say it is final."""
    reason = error.reason.removesuffix(RETRIED).removesuffix(".")
    tried = "once" if attempts == 1 else f"{attempts} times"
    return msgspec.structs.replace(error, reason=f"{reason}; tried {tried}, given up.")
