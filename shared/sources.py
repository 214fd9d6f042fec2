"""Source URLs: validation, Jellyfin rebasing, the key that makes equal requests share a transcode,
and redaction for display."""

from __future__ import annotations

import hashlib
import os
import re
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from shared.errors import BadRequest

MAX_URL_LENGTH = 8192

# Query parameters that identify a session or carry credentials, not what is streamed.
_SESSION_PARAMS = frozenset(
    {
        "api_key",
        "apikey",
        "x-emby-token",
        "token",
        "deviceid",
        "playsessionid",
    }
)
# Query parameters whose values are secrets (or sign for one), masked wherever a URL is shown or
# logged: Jellyfin tokens, bearer tokens, and the signed-URL parameters of S3, GCS, Azure and OSS.
SECRET_PARAMS = frozenset(
    {
        # Jellyfin / Emby, and the usual bearer tokens
        "api_key",
        "apikey",
        "x-emby-token",
        "x-mediabrowser-token",
        "token",
        "access_token",
        "authorization",
        # other media servers' tokens, API keys, and passwords put in a query
        "x-plex-token",
        "key",
        "api-key",
        "x-api-key",
        "password",
        "passwd",
        "pwd",
        "secret",
        "client_secret",
        # S3 (SigV4) and GCS (V4, and V2's GoogleAccessId/Signature)
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "x-goog-signature",
        "x-goog-credential",
        "googleaccessid",
        "signature",
        # Azure SAS: the signature, its expiry, and the user delegation key's fields
        "sig",
        "se",
        "skoid",
        "sktid",
        "skt",
        "ske",
        "sks",
        "skv",
        "saoid",
        "suoid",
        "scid",
        # Alibaba OSS (V1 and V4) and CloudFront
        "ossaccesskeyid",
        "security-token",
        "x-oss-signature",
        "x-oss-credential",
        "x-oss-security-token",
        "key-pair-id",
    }
)
# A Jellyfin media route: /Videos/{id}/<endpoint>..., /Audio/{id}/<endpoint>... (the endpoints
# that stream media) or /Items/{id}/Download; case-insensitive.
_MEDIA_ROUTE = re.compile(
    r"(?i)(?:videos|audio)/[^/]+/(?:stream(?:\.[\w]+)?|universal|[^/]+\.m3u8|hls1?)(?:/.*)?"
    r"|items/[^/]+/download"
)


def validate_http_url(url: object) -> str:
    """A usable http(s) URL, or a `BadRequest` that says what is wrong with it."""
    if url is None or url == "":
        raise BadRequest("`url` is required: the http(s) URL of the source video")
    if not isinstance(url, str):
        raise BadRequest("`url` must be a string")
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise BadRequest(f"`url` is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError as exc:
        raise BadRequest(f"`url` is not a valid URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise BadRequest(
            f"`url` must be an http or https URL, not {parts.scheme or 'a bare path'!r}"
        )
    if not parts.hostname:
        raise BadRequest("`url` has no host")
    return url


OBJECT_SCHEMES = ("s3://", "oss://", "gs://", "az://")


def is_object_uri(source: str) -> bool:
    """Whether a source names an object in a bucket (read through a signed URL)."""
    return source.startswith(OBJECT_SCHEMES)


def check_local_source(source: str, roots: list[str], *, resolve: bool = False) -> str:
    """A local path (or file:// URL) that lies under one of the media roots, normalised.

    `resolve` also follows symbolic links (where the files are), so a link cannot lead out.
    """
    path = source[len("file://") :] if source.startswith("file://") else source
    if "\x00" in path or not os.path.isabs(path):
        raise BadRequest("A local source must be an absolute path under a media root.")
    if not roots:
        raise BadRequest("Local sources are not enabled on this server (no media roots).")
    normal = os.path.realpath(path) if resolve else os.path.normpath(path)
    for root in roots:
        base = os.path.realpath(root) if resolve else os.path.normpath(root)
        if os.path.commonpath([base, normal]) == base:
            return normal
    raise BadRequest("The source path is not under any of this server's media roots.")


def rebase_on_jellyfin(url: str, jellyfin_url: str) -> str:
    """Point a Jellyfin media URL at the configured Jellyfin server.

    Clients send the address they use (often a public one); the server may reach Jellyfin on
    another. Only a Jellyfin media route is rebased (`/Videos/{id}/stream...`, `.m3u8`, `hls`;
    `/Audio/{id}/...` the same, and `universal`; `/Items/{id}/Download`), found at the start of the
    path or after a base path: the configured server's own base path, or one segment (a proxy's
    prefix or Jellyfin's "Base URL", like `/jellyfin`). Any other URL is left as it is.
    """
    parts = urlsplit(url)
    route = _media_route(parts.path, urlsplit(jellyfin_url).path)
    if route is None:
        return url
    base = urlsplit(jellyfin_url.rstrip("/"))
    path = base.path.rstrip("/") + "/" + route
    return urlunsplit((base.scheme, base.netloc, path, parts.query, ""))


def _media_route(path: str, jellyfin_base: str) -> str | None:
    """The Jellyfin media route `path` names, without its base path; None when it names none."""
    segments = path.split("/")[1:]
    if any(unquote(s) in (".", "..") for s in segments):
        return None  # the server resolves dot segments to some other route
    configured = [s.lower() for s in jellyfin_base.split("/") if s]
    starts = [0, 1]
    if configured and [s.lower() for s in segments[: len(configured)]] == configured:
        starts.append(len(configured))
    for start in starts:
        route = "/".join(segments[start:])
        if _MEDIA_ROUTE.fullmatch(route):
            return route
    return None


def rendition_key(source: str, profile: str, container: str) -> str:
    """Equal for requests that would produce the same output: same media, profile and container.

    Credentials and session parameters are ignored; the other query parameters are sorted.
    """
    parts = urlsplit(source)
    params = sorted(
        (k.lower(), v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if k.lower() not in _SESSION_PARAMS
    )
    normal = urlunsplit(
        (
            parts.scheme.lower(),
            (parts.hostname or "").lower() + _port(parts.port),
            parts.path,
            urlencode(params),
            "",
        )
    )
    digest = hashlib.sha256(f"{normal}\n{profile}\n{container}".encode())
    return digest.hexdigest()[:40]


def _port(port: int | None) -> str:
    return f":{port}" if port else ""


def redact(url: str) -> str:
    """The URL with credentials replaced by '***', safe to show and log."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    params = [
        (k, "***" if k.lower() in SECRET_PARAMS else v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(params, safe="*"), ""))


_SECRET_NAMES = "|".join(re.escape(name) for name in sorted(SECRET_PARAMS, key=len, reverse=True))
_SECRET_IN_TEXT = re.compile(rf"(?i)([?&](?:{_SECRET_NAMES})=)[^&#\s'\"<>]+")
# up to the authority's last @ (a password may hold an unescaped one), never past its end
_USERINFO_IN_TEXT = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)[^/?#\s'\"<>]+@")


def scrub(text: str) -> str:
    """Mask credentials in URLs inside free text (ffmpeg's messages quote the source URL): secret
    query parameters (signed-URL signatures and credentials among them) and user:password@."""
    if "=" not in text and "://" not in text:
        return text  # neither a query parameter nor a URL's userinfo (most log values)
    return _USERINFO_IN_TEXT.sub(r"\1***@", _SECRET_IN_TEXT.sub(r"\1***", text))


def duration_from_ticks(ticks: object) -> float | None:
    """Seconds from a Jellyfin `RunTimeTicks` value (100 ns ticks), if it is a sane number."""
    if isinstance(ticks, bool) or not isinstance(ticks, int | float):
        return None
    seconds = float(ticks) / 10_000_000
    return seconds if 0 < seconds < 10 * 86_400 else None
