"""The OpenEncoder face's numbers, without a system: a path's id is ASCII digits or names nothing,
and an option's number is bounded or refused by name (never a 500)."""

from __future__ import annotations

import json

import pytest

from services.gateway.faces.openencoder.ids import parse_id
from services.gateway.faces.openencoder.options import parse_data
from shared.errors import BadRequest


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
