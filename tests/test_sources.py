"""Source URLs shown or logged never carry a provider's signature or credential, and only Jellyfin
media routes are pointed at the configured Jellyfin server."""

from __future__ import annotations

import pytest

from shared.sources import rebase_on_jellyfin, redact, scrub

S3_SIGNED = (
    "https://bucket.s3.us-east-1.amazonaws.com/in/movie.mkv?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIASECRETKEYID%2F20261207%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Date=20261207T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
    "&X-Amz-Security-Token=SESSIONTOKENSECRET&X-Amz-Signature=deadbeefSIGNATURE"
)
GCS_SIGNED = (
    "https://storage.googleapis.com/bucket/in/movie.mkv?X-Goog-Algorithm=GOOG4-RSA-SHA256"
    "&X-Goog-Credential=svc%40proj.iam.gserviceaccount.com%2F20261207%2Fauto%2Fstorage"
    "%2Fgoog4_request&X-Goog-Date=20261207T000000Z&X-Goog-Expires=900"
    "&X-Goog-SignedHeaders=host&X-Goog-Signature=0123abcdGOOGSIG"
)
AZURE_SAS = (
    "https://acct.blob.core.windows.net/videos/in/movie.mkv?sv=2021-08-06&ss=b&srt=o&sp=r"
    "&se=2026-12-08T00%3A00%3A00Z&st=2026-12-07T00%3A00%3A00Z&spr=https"
    "&skoid=OBJECTIDSECRET&sktid=TENANTSECRET&skt=2026-12-07&ske=2026-12-08&sks=b"
    "&skv=2021-08-06&sig=AZURESIG%2Babc%3D"
)
OSS_SIGNED = (
    "https://bucket.oss-cn-hangzhou.aliyuncs.com/in/movie.mkv?OSSAccessKeyId=LTAISECRETID"
    "&Expires=1700000000&Signature=OSSSIG%3D&security-token=OSSSTS"
)
SECRETS = {
    "s3": (S3_SIGNED, ["AKIASECRETKEYID", "SESSIONTOKENSECRET", "deadbeefSIGNATURE"]),
    "gcs": (GCS_SIGNED, ["svc%40proj", "svc@proj", "0123abcdGOOGSIG"]),
    "azure": (AZURE_SAS, ["AZURESIG", "OBJECTIDSECRET", "TENANTSECRET", "2026-12-08T00"]),
    "oss": (OSS_SIGNED, ["LTAISECRETID", "OSSSIG", "OSSSTS"]),
    "jellyfin": ("http://jf/Videos/1/stream?Static=true&api_key=JFTOKEN", ["JFTOKEN"]),
    "token": ("https://cdn.example/a.m3u8?token=BEARERTOKEN&x=1", ["BEARERTOKEN"]),
    "access_token": ("https://cdn.example/a.mp4?access_token=OAUTHSECRET", ["OAUTHSECRET"]),
    "plex": ("http://plex:32400/library/parts/1/file.mkv?X-Plex-Token=PLEXTOKEN", ["PLEXTOKEN"]),
    "google_api_key": (
        "https://www.googleapis.com/drive/v3/files/1?alt=media&key=AIzaGKEY",
        ["AIzaGKEY"],
    ),
    "password": ("http://nas.example/dl.cgi?file=a.mkv&user=ann&password=NASPASS", ["NASPASS"]),
}


@pytest.mark.parametrize("provider", list(SECRETS))
def test_redact_masks_each_providers_signature_and_credential(provider: str) -> None:
    url, secrets = SECRETS[provider]
    shown = redact(url)
    for secret in secrets:
        assert secret not in shown, (secret, shown)
    assert shown.split("?")[0] == url.split("?")[0]  # where it points stays readable


@pytest.mark.parametrize("provider", list(SECRETS))
def test_scrub_masks_signed_urls_quoted_in_free_text(provider: str) -> None:
    url, secrets = SECRETS[provider]
    for text in (
        f"[https @ 0x55] Error opening input {url}: Server returned 403 Forbidden\n",
        f"Error opening input file '{url}'.",
        url,
        f'{{"url": "{url}"}}',
    ):
        shown = scrub(text)
        for secret in secrets:
            assert secret not in shown, (secret, shown)
        assert url.split("?")[0] in shown


def test_masking_keeps_what_is_not_secret() -> None:
    shown = redact(S3_SIGNED)
    assert "X-Amz-Expires=3600" in shown and "X-Amz-Algorithm=AWS4-HMAC-SHA256" in shown
    assert "X-Amz-Signature=***" in shown and "X-Amz-Credential=***" in shown
    assert "sp=r" in redact(AZURE_SAS) and "sig=***" in redact(AZURE_SAS)
    assert scrub("no urls here, token bucket=3") == "no urls here, token bucket=3"
    assert "Static=true" in scrub("http://jf/Videos/1/stream?Static=true&api_key=SECRET")


JF = "http://10.0.0.5:8096"


@pytest.mark.parametrize(
    "url,expected",
    [
        ("https://public.example/Videos/42/stream?api_key=T", f"{JF}/Videos/42/stream?api_key=T"),
        ("https://public.example/videos/42/stream.mkv?x=1", f"{JF}/videos/42/stream.mkv?x=1"),
        (
            "https://public.example/jellyfin/Videos/42/master.m3u8?api_key=T",
            f"{JF}/Videos/42/master.m3u8?api_key=T",
        ),
        ("https://public.example/AUDIO/7/universal?api_key=T", f"{JF}/AUDIO/7/universal?api_key=T"),
        ("https://public.example/Items/9/Download?api_key=T", f"{JF}/Items/9/Download?api_key=T"),
        ("https://public.example/jf/items/9/download", f"{JF}/items/9/download"),
    ],
)
def test_jellyfin_media_routes_are_rebased(url: str, expected: str) -> None:
    assert rebase_on_jellyfin(url, JF + "/") == expected


@pytest.mark.parametrize(
    "url",
    [
        "https://cdn.example/file.mp4",
        "https://cdn.example/media/videos/movie.mp4",  # a videos folder, not a route
        "https://cdn.example/a/b/videos/42/stream",  # deeper than one base segment
        "https://cdn.example/Videos/42",  # an item, not its media
        "https://cdn.example/Videos//stream",  # no id
        "https://cdn.example/Items/9/Images/Primary",  # only /Items/{id}/Download is media
        "https://cdn.example/items/9/download/extra",
        "https://cdn.example/audio/track.mp3",
        "https://cdn.example/static/audio/42/track.mp3",
        # dot segments: the server resolves them to another route (/System/Info, /Users)
        "https://public.example/Videos/42/stream/../../../System/Info",
        "https://public.example/Videos/42/stream/%2e%2e/%2E%2E/%2e%2e/Users",
        "https://public.example/Videos/../Users/1/hls1/x",
    ],
)
def test_urls_that_are_not_jellyfin_media_routes_are_left_alone(url: str) -> None:
    assert rebase_on_jellyfin(url, JF) == url


def test_a_configured_base_path_is_kept_and_recognised() -> None:
    jellyfin = "http://10.0.0.5:8096/media/jellyfin"
    # the public URL has the same (two-segment) base path as the configured server
    assert rebase_on_jellyfin(
        "https://public.example/media/jellyfin/Videos/42/stream?x=1", jellyfin
    ) == (f"{jellyfin}/Videos/42/stream?x=1")
    # or a one-segment proxy prefix, or none: the configured base path is put in front
    assert rebase_on_jellyfin("https://public.example/Videos/42/stream", jellyfin) == (
        f"{jellyfin}/Videos/42/stream"
    )
    assert rebase_on_jellyfin("https://public.example/other/base/Videos/42/stream", jellyfin) == (
        "https://public.example/other/base/Videos/42/stream"
    )


def test_log_lines_mask_signed_urls_whatever_the_call_site_passed() -> None:
    from shared.logging import mask_secrets

    event = {
        "event": "work.crashed",
        "error": f"OSError: cannot open {S3_SIGNED}",
        "exception": f'Traceback ...\n  File "x.py"\nav.error.HTTPError: 403: {GCS_SIGNED}',
        "argv": ["ffmpeg", "-i", AZURE_SAS],
        "attempt": 2,
    }
    shown = repr(mask_secrets(None, "warning", event))
    for provider in ("s3", "gcs", "azure"):
        for secret in SECRETS[provider][1]:
            assert secret not in shown, (secret, shown)
    assert "'attempt': 2" in shown and "work.crashed" in shown


def test_a_password_with_an_unescaped_at_sign_is_masked_whole() -> None:
    # urlsplit (and so ffmpeg's reader of the same text) takes the last @ as the userinfo's end
    url = "http://ann:pa@ss@nas.example/a.mkv"
    for shown in (redact(url), scrub(f"Error opening input '{url}'"), scrub(url)):
        assert "pa@" not in shown and "ss@" not in shown, shown
        assert "://***@nas.example/a.mkv" in shown, shown
    # an @ after the path or the query is no userinfo: the host stays readable
    assert scrub("http://nas.example/a@b.mkv?x=c@d") == "http://nas.example/a@b.mkv?x=c@d"


LOGGED = """
import logging, structlog
from shared.logging import configure
configure(fmt=FMT)
try:
    raise OSError("cannot open URL1")
except OSError:
    structlog.get_logger("t").exception("work.crashed")
    logging.getLogger("asyncio").exception("Task exception was never retrieved")
logging.getLogger("aiohttp.client").warning("request to %s failed", "URL2")
"""


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_every_log_line_of_a_process_masks_signed_urls(fmt: str) -> None:
    """What a service prints to its log, however it got there: a structlog traceback (on a
    terminal too), and the standard library's loggers (asyncio, aiohttp) with their tracebacks."""
    import subprocess
    import sys
    from pathlib import Path

    code = LOGGED.replace("FMT", repr(fmt)).replace("URL1", S3_SIGNED).replace("URL2", AZURE_SAS)
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    shown = done.stderr
    assert "work.crashed" in shown and "Task exception was never retrieved" in shown, shown
    assert "request to" in shown and "blob.core.windows.net" in shown, shown
    for provider in ("s3", "azure"):
        for secret in SECRETS[provider][1]:
            assert secret not in shown, (secret, shown)
