"""The OpenEncoder face's numbers, without a system: a path's id is ASCII digits or names nothing,
an option's number is bounded or refused by name (never a 500), and a machine keeps one integer
id, the one its creation answered when it was asked for (counters in a real NATS bucket)."""

from __future__ import annotations

import json

import nats
import pytest

from services.gateway.faces.openencoder.ids import Counters, parse_id
from services.gateway.faces.openencoder.options import parse_data
from shared.errors import BadRequest
from tests.harness import new_namespace
from vidmesh.natsserver import NatsServer


def test_a_paths_id_is_a_few_ascii_digits() -> None:
    assert parse_id("42") == 42
    for odd in ("²", "٣", "-1", "1.0", " 1", "1\n", "", "9" * 19, "9" * 5000):
        assert parse_id(odd) is None, odd


@pytest.mark.parametrize(
    "option",
    ["-g ²", "-r ²", "-crf ²", "-keyint_min ²", "-g " + "9" * 5000, "-vf scale=-2:٣٦٠"]
    + [f"{name} {'9' * 400}k" for name in ("-b:v", "-b:a", "-maxrate", "-bufsize", "-minrate")]
    + ["-b:v 1e400k", "-b:v 999999999M", "-b:a 8k"],
)
def test_an_options_number_out_of_bounds_is_refused_by_name(option: str) -> None:
    with pytest.raises(BadRequest) as refused:
        parse_data(json.dumps({"raw": ["-c:v libx264", option]}))
    assert refused.value.details == {"option": refused.value.details["option"]}
    named = refused.value.details["option"]
    assert named.split()[0] == option.split()[0] and len(named) <= 80, named
    assert option.split()[0] in refused.value.message


def test_bit_rates_in_bounds_are_read() -> None:
    spec = parse_data(json.dumps({"raw": ["-b:v 2.5M", "-bufsize 5000k", "-b:a 96k"]}))
    assert spec.video is not None and spec.audio is not None
    assert (spec.video.max_bitrate_kbps, spec.video.buffer_kbps) == (2500, 5000)
    assert spec.audio.bitrate_kbps == 96


# OpenEncoder's own presets, as its database ships them: a client copies these.
OPENENCODER_PRESETS = {
    "h264_baseline_360p_600": ["-vf scale=-2:360", "-c:v libx264", "-profile:v baseline",
        "-level:v 3.0", "-x264opts scenecut=0:open_gop=0:min-keyint=72:keyint=72",
        "-minrate 600k", "-maxrate 600k", "-bufsize 600k", "-b:v 600k", "-y"],
    "h264_main_1080p_6000": ["-vf scale=-2:1080", "-c:v libx264", "-profile:v main",
        "-level:v 4.2", "-x264opts scenecut=0:open_gop=0:min-keyint=72:keyint=72",
        "-minrate 6000k", "-maxrate 6000k", "-bufsize 6000k", "-b:v 6000k", "-y"],
    "webm_vp9_720p_3000": ["-vf scale=-2:720", "-c:v libvpx-vp9", "-level:v 4.0", "-b:v 3000k",
        "-pix_fmt yuv420p", "-f webm", "-y"],
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(OPENENCODER_PRESETS))
def test_openencoders_own_presets_are_read(name: str) -> None:
    spec = parse_data(json.dumps({"raw": OPENENCODER_PRESETS[name]}))
    assert spec.video is not None and spec.video.max_height == int(name.split("_")[2][:-1])
    if spec.video.codec == "h264":
        assert spec.video.keyframe_interval == 72 and spec.video.level is not None
    else:
        assert spec.container == "webm"


@pytest.mark.parametrize("raw", ["-x264opts nal-hrd=cbr", "-x264opts keyint", "-x264opts keyint=0"])
def test_x264opts_takes_only_its_known_keys_in_bounds(raw: str) -> None:
    with pytest.raises(BadRequest) as refused:
        parse_data(json.dumps({"raw": [raw]}))
    assert "-x264opts" in refused.value.message


async def test_a_machine_keeps_its_number_and_takes_the_one_its_creation_answered(
    nats_server: NatsServer,
) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    bucket = f"{new_namespace()}-openencoder"
    try:
        counters = Counters(await js.create_key_value(bucket=bucket, history=5))
        first = await counters.machine("host-1-abc", "default")
        assert first == 1 and await counters.machine("host-1-abc", "default") == 1
        # Two machines asked of the gpu pool: the next gpu transcoders are listed under the
        # ids the creation answered, oldest first; another pool's transcoder takes a new one
        asked = await counters.reserve("gpu", 2)
        assert asked == [2, 3]
        assert await counters.machine("other pool", "default") == 4  # (hashed key)
        assert await counters.machine("gpu-pod-x", "gpu") == 2
        assert await counters.machine("gpu-pod-y", "gpu") == 3
        assert await counters.machine("gpu-pod-z", "gpu") == 5
        assert await counters.machine("gpu-pod-x", "gpu") == 2
        # ... and a second gateway over the same bucket agrees
        again = Counters(await js.key_value(bucket))
        assert await again.machine("gpu-pod-y", "gpu") == 3
    finally:
        await js.delete_key_value(bucket)
        await nc.close()
