"""Why a capability check failed, in one line a person can act on, distilled from ffmpeg's stderr.

`shared.media.capabilities` re-exports the public names: import them from there.
"""

from __future__ import annotations

import re

from shared.media._probe_cases import CheckKind

REASON_MAX_CHARS = 200

_LOG_PREFIX = re.compile(r"^(?:\[[^\]]*\]\s*)+")
_NOISE = ("svt[", "x265 [", "link '", "pixel formats:", "src:", "dst:")
# lines that name a cause, not a consequence; the first one in stderr wins
_TELLING = re.compile(
    r"nvenc api|driver|libcuda|cuda_error|cannot load|failed to load|could not dynamically load|"
    r"no va display|libva|\bva_|mfx|no capable devices|openencodesessionex|unknown encoder|"
    r"unknown decoder|no such filter|not supported|unsupported|doesn't support|does not support|"
    r"no device available|device creation failed|hwaccel",
    re.IGNORECASE,
)
_FAILING = re.compile(r"error|failed|invalid|impossible|cannot|could not", re.IGNORECASE)


def distill_reason(stderr: str, returncode: int, kind: CheckKind = "encoder") -> str:
    """The one stderr line that best says why a check failed, at most REASON_MAX_CHARS."""
    lines = [_LOG_PREFIX.sub("", line).strip() for line in stderr.splitlines()]
    lines = [line for line in lines if line and not line.lower().startswith(_NOISE)]
    telling = _first_with(lines, _TELLING)
    if telling is not None:
        return trim_reason(telling)
    if kind == "decoder" and "impossible to convert between the formats" in stderr.lower():
        return "frames were not decoded on the hardware: ffmpeg fell back to software decoding"
    line = _first_with(lines, _FAILING) or (lines[-1] if lines else None)
    if line is not None:
        return trim_reason(line)
    if returncode < 0:
        return f"ffmpeg was killed by signal {-returncode}"
    return f"ffmpeg exited with code {returncode}"


def trim_reason(text: str) -> str:
    """`text` cut to REASON_MAX_CHARS, ending in "..." when it was longer."""
    return text if len(text) <= REASON_MAX_CHARS else text[: REASON_MAX_CHARS - 3] + "..."


def _first_with(lines: list[str], pattern: re.Pattern[str]) -> str | None:
    return next((line for line in lines if pattern.search(line)), None)
