"""The node capability probe, specified by what a worker learns from it: real ffmpeg runs on this
machine (CPU only, no /dev/dri), the reasons it gives, and the per-node cache file."""

from __future__ import annotations

import os
import time
from pathlib import Path

import msgspec
import pytest

from shared.media import ffmpeg_version, run_ffmpeg
from shared.media.capabilities import (
    DEFAULT_CHECKS,
    REASON_MAX_CHARS,
    Capabilities,
    CapabilityCache,
    CapabilityCheck,
    CheckKind,
    distill_reason,
    probe_capabilities,
)
from tests.media_clips import ffmpeg_exe, make_clip

# a quick list for the cache tests: one check that works here, one device, one GPU encoder
QUICK: list[tuple[str, CheckKind]] = [
    ("libx264", "encoder"),
    ("cuda", "hwaccel"),
    ("h264_nvenc", "encoder"),
]


def node(**ok: bool) -> Capabilities:
    """Capabilities as a probe would report them, with the given checks passing or failing."""
    checks = [
        CapabilityCheck(name=name, kind=kind_of(name), ok=works, reason="" if works else "broken")
        for name, works in ok.items()
    ]
    return Capabilities(ffmpeg="ffmpeg", ffmpeg_version="v", probed_at=0.0, host="h", checks=checks)


def kind_of(name: str) -> CheckKind:
    if ":" in name:
        return "decoder"
    return "filter" if name.startswith("scale_") else "encoder"


def process_running(marker: str) -> bool:
    """Whether a live (not zombie) process has `marker` on its command line."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if marker.encode() in cmdline and "State:\tZ" not in status:
            return True
    return False


# ---------------------------------------------------------------- the probe, on this CPU node


async def test_full_default_probe_finds_the_cpu_pipeline_only_and_says_why_gpus_fail() -> None:
    # Given this CPU-only machine, When the whole default probe runs
    started = time.monotonic()
    caps = await probe_capabilities(ffmpeg_exe())
    took = time.monotonic() - started

    # Then every default check is reported once, in order, in well under 10 s
    assert [(c.name, c.kind) for c in caps.checks] == list(DEFAULT_CHECKS)
    assert took < 10.0
    assert {"libx264", "libx265", "libsvtav1"} <= caps.working()
    assert caps.pipelines() == ["cpu"]
    # and every hardware check failed with a short reason a person can act on
    failed = caps.failed()
    for name in ("h264_nvenc", "cuda", "cuda:h264", "cuda:av1", "scale_cuda", "h264_vaapi"):
        assert failed[name], name
    assert all(0 < len(reason) <= REASON_MAX_CHARS for reason in failed.values())
    assert "libcuda" in failed["cuda"]
    assert "VA display" in failed["vaapi"]
    assert caps.ffmpeg == ffmpeg_exe()
    assert caps.ffmpeg_version == ffmpeg_version(ffmpeg_exe())
    assert caps.host and caps.probed_at <= time.time()


async def test_hardware_checks_run_without_a_device_check_fail_with_their_own_reason() -> None:
    # Given no device checks in the list, the hardware checks are really run
    caps = await probe_capabilities(
        ffmpeg_exe(),
        checks=[
            ("libx264", "encoder"),
            ("libx265", "encoder"),
            ("libsvtav1", "encoder"),
            ("h264_nvenc", "encoder"),
            ("cuda:h264", "decoder"),
            ("scale_cuda", "filter"),
            ("h264_vaapi", "encoder"),
        ],
    )

    assert caps.working() == {"libx264", "libx265", "libsvtav1"}
    failed = caps.failed()
    assert set(failed) == {"h264_nvenc", "cuda:h264", "scale_cuda", "h264_vaapi"}
    # the cause, not ffmpeg's generic "Error while opening encoder" consequence
    assert "libcuda" in failed["h264_nvenc"]
    assert "libcuda" in failed["cuda:h264"]
    assert "libcuda" in failed["scale_cuda"]
    assert "VA display" in failed["h264_vaapi"]
    assert all(c.seconds > 0 for c in caps.checks)


async def test_a_made_up_encoder_fails_as_unknown() -> None:
    caps = await probe_capabilities(ffmpeg_exe(), checks=[("h264_imaginary", "encoder")])

    assert caps.failed() == {"h264_imaginary": "Unknown encoder 'h264_imaginary'"}
    assert caps.pipelines() == []


async def test_a_check_past_its_timeout_is_killed_and_recorded_as_timed_out() -> None:
    # Given a filter that would take about 15 s (real time slowed to 1.37 %) and a 0.5 s timeout
    slow = "realtime=speed=0.0137"
    started = time.monotonic()
    caps = await probe_capabilities(
        ffmpeg_exe(), timeout=0.5, checks=[(slow, "filter"), ("libx264", "encoder")]
    )

    # Then the probe gave up on it at the deadline, killed that ffmpeg, and went on
    assert time.monotonic() - started < 5.0
    assert caps.failed() == {slow: "timed out after 0.5 s"}
    assert not process_running(slow)
    assert caps.working() == {"libx264"}


async def test_software_fallback_of_a_hardware_decode_reads_as_a_failure(tmp_path: Path) -> None:
    # Given what ffmpeg prints when decoded frames are in memory, not on the GPU (its silent
    # software fallback), meeting the hwdownload filter of a decode check
    clip = make_clip(tmp_path / "h264.mp4", seconds=0.2, acodec=None)
    result = await run_ffmpeg(
        [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", str(clip)]
        + ["-vf", "hwdownload,format=nv12", "-f", "null", "-"]
    )

    assert result.returncode != 0
    assert distill_reason(result.stderr_tail, result.returncode, "decoder") == (
        "frames were not decoded on the hardware: ffmpeg fell back to software decoding"
    )


@pytest.mark.gpu
async def test_an_nvidia_node_finds_cuda_and_a_gpu_pipeline() -> None:
    caps = await probe_capabilities(ffmpeg_exe())

    assert "cuda" in caps.working(), caps.failed()
    assert {"nvdec", "nvenc"} & set(caps.pipelines()), caps.failed()


# ---------------------------------------------------------------- pipelines, from checks


@pytest.mark.parametrize(
    ("checks", "pipelines"),
    [
        ({"h264_nvenc": True, "libx264": True}, ["nvenc", "cpu"]),
        # the H100: NVDEC and CUDA scaling, no NVENC
        (
            {"cuda:h264": True, "scale_cuda": True, "h264_nvenc": False, "libx264": True},
            ["nvdec", "cpu"],
        ),
        ({"cuda:h264": True, "scale_cuda": False, "libx264": True}, ["cpu"]),
        ({"hevc_nvenc": True, "h264_nvenc": False}, ["nvenc"]),
        (
            {
                "libx264": True,
                "h264_qsv": True,
                "h264_vaapi": True,
                "cuda:h264": True,
                "scale_cuda": True,
                "av1_nvenc": True,
            },
            ["nvenc", "nvdec", "vaapi", "qsv", "cpu"],
        ),
        ({"libx264": False, "libx265": True}, []),
    ],
    ids=["nvenc-first", "h100-nvdec", "no-gpu-scale-no-nvdec", "any-nvenc", "all", "no-x264"],
)
def test_pipelines_are_ranked_best_first_from_what_works(
    checks: dict[str, bool], pipelines: list[str]
) -> None:
    assert node(**checks).pipelines() == pipelines


# ---------------------------------------------------------------- the per-node cache


async def test_cache_probes_once_and_a_new_cache_on_the_same_file_reuses_it(tmp_path: Path) -> None:
    path = tmp_path / "data" / "capabilities.json"
    first = await CapabilityCache(path, ffmpeg_exe(), checks=QUICK).get()
    assert path.exists()

    # When another process (a new cache on the same file) asks, Then nothing is probed again
    again = await CapabilityCache(path, ffmpeg_exe(), checks=QUICK).get()

    assert again == first
    assert again.probed_at == first.probed_at
    assert again.working() == {"libx264"}


async def test_cache_probes_again_for_another_ffmpeg_version(tmp_path: Path) -> None:
    path = tmp_path / "capabilities.json"
    first = await CapabilityCache(path, ffmpeg_exe(), checks=QUICK).get()
    # Given a file written for an older ffmpeg at the same path
    older = msgspec.structs.replace(first, ffmpeg_version="ffmpeg version 6.0", checks=[])
    path.write_bytes(msgspec.json.encode(older))

    caps = await CapabilityCache(path, ffmpeg_exe(), checks=QUICK).get()

    assert caps.ffmpeg_version == ffmpeg_version(ffmpeg_exe())
    assert caps.probed_at > first.probed_at
    assert caps.working() == {"libx264"}


async def test_cache_probes_again_for_another_ffmpeg_path(tmp_path: Path) -> None:
    path = tmp_path / "capabilities.json"
    first = await CapabilityCache(path, ffmpeg_exe(), checks=QUICK).get()
    other = tmp_path / "ffmpeg"
    other.symlink_to(ffmpeg_exe())

    caps = await CapabilityCache(path, str(other), checks=QUICK).get()

    assert caps.ffmpeg == str(other)
    assert caps.probed_at > first.probed_at


async def test_cache_probes_again_when_its_file_is_damaged(tmp_path: Path) -> None:
    path = tmp_path / "capabilities.json"
    path.write_text('{"ffmpeg": ')

    caps = await CapabilityCache(path, ffmpeg_exe(), checks=QUICK).get()

    assert caps.working() == {"libx264"}
    assert msgspec.json.decode(path.read_bytes(), type=Capabilities) == caps


async def test_refresh_probes_again(tmp_path: Path) -> None:
    cache = CapabilityCache(tmp_path / "capabilities.json", ffmpeg_exe(), checks=QUICK)
    first = await cache.get()

    refreshed = await cache.refresh()

    assert refreshed.probed_at > first.probed_at
    assert await cache.get() == refreshed


async def test_disabled_encoder_stays_off_until_refresh_even_across_restarts(
    tmp_path: Path,
) -> None:
    path = tmp_path / "capabilities.json"
    cache = CapabilityCache(path, ffmpeg_exe(), checks=QUICK)
    assert (await cache.get()).pipelines() == ["cpu"]

    # When libx264 fails in the middle of a job
    caps = cache.disable("libx264", "x264 crashed mid-encode (signal 11)")

    assert "libx264" not in caps.working()
    assert caps.failed()["libx264"] == "x264 crashed mid-encode (signal 11)"
    assert caps.pipelines() == []
    # Then a restarted worker (a new cache on the same file) still does not use it
    restarted = await CapabilityCache(path, ffmpeg_exe(), checks=QUICK).get()
    assert restarted.pipelines() == []
    assert restarted.probed_at == caps.probed_at
    # until the node is probed again
    assert (await cache.refresh()).pipelines() == ["cpu"]


async def test_disabling_a_pipeline_disables_the_checks_it_stands_on(tmp_path: Path) -> None:
    # Given a cache file written on an H100 node for this very ffmpeg
    path = tmp_path / "capabilities.json"
    h100 = msgspec.structs.replace(
        node(**{"cuda:h264": True, "scale_cuda": True, "h264_nvenc": False, "libx264": True}),
        ffmpeg=ffmpeg_exe(),
        ffmpeg_version=ffmpeg_version(ffmpeg_exe()),
    )
    path.write_bytes(msgspec.json.encode(h100))
    cache = CapabilityCache(path, ffmpeg_exe(), checks=QUICK)
    assert await cache.get() == h100  # read, not probed

    # When the nvdec pipeline fails in a job
    caps = cache.disable("nvdec", "CUDA_ERROR_ILLEGAL_ADDRESS in scale_cuda")

    assert caps.pipelines() == ["cpu"]
    assert caps.failed()["cuda:h264"] == "CUDA_ERROR_ILLEGAL_ADDRESS in scale_cuda"
    assert caps.failed()["scale_cuda"] == "CUDA_ERROR_ILLEGAL_ADDRESS in scale_cuda"


def test_disable_before_anything_was_probed_is_refused(tmp_path: Path) -> None:
    cache = CapabilityCache(tmp_path / "capabilities.json", ffmpeg_exe())

    with pytest.raises(RuntimeError, match="get"):
        cache.disable("libx264", "broken")
