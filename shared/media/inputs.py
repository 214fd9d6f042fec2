"""How ffmpeg and PyAV open a source: through the attempt's checking proxy, with only the
protocols that kind of source needs, verifying the certificates of https servers.

Checked with the wheel's ffmpeg 9.0.2 (OpenSSL) and PyAV's libavformat 62 (GnuTLS):
- `http_proxy` reaches every connection, redirects and HLS segments included; https goes through
  it as a CONNECT tunnel. ffmpeg and PyAV skip the proxy for hosts named in the `no_proxy`
  environment variable, so `without_proxy_bypass` removes it.
- ffmpeg refuses an input option nothing consumed, so `tls_verify`/`ca_file` go only with https
  sources; the URLs an http(s) source leads to (redirects to https, HLS segments) are verified by
  ffmpeg's default (on), against `SSL_CERT_FILE`, which `ffmpeg_env` sets to the same bundle.
- PyAV (GnuTLS) verifies only the connection handed `tls_verify`, never the URLs a source leads
  to (HLS/DASH segments, keys, variants): so its proxy verifies every https server itself
  (services.transcoder.tls_origin) and PyAV is told not to check the proxy's own certificate.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from pathlib import Path

import msgspec

from shared.media.probe import is_http

# http(s) sources, HLS/DASH playlists and their (possibly AES-encrypted) segments, via the proxy
HTTP_PROTOCOLS = "http,https,tcp,tls,crypto,httpproxy"
# files under a media root: never the network, so a playlist there cannot name a URL
FILE_PROTOCOLS = "file,crypto"
_PROXY_BYPASS = ("no_proxy", "NO_PROXY")
_CA_CANDIDATES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/cert.pem",  # macOS, some BSDs
)


class SourceTLS(msgspec.Struct, frozen=True, kw_only=True):
    """Whether https sources are verified, and against which CA bundle (None: none was found)."""

    verify: bool = True
    ca_file: str | None = None


def source_tls(verify: bool, ca_file: str = "") -> SourceTLS:
    """The TLS settings for sources: `ca_file` if named, else the system's CA bundle."""
    if not verify:
        return SourceTLS(verify=False)
    if ca_file:
        if not Path(ca_file).is_file():
            raise ValueError(f"source_ca_file: {ca_file!r} is not a file")
        return SourceTLS(ca_file=ca_file)
    return SourceTLS(ca_file=system_ca_file())


def system_ca_file() -> str | None:
    """The system's CA bundle: Python's OpenSSL default, the usual distribution paths, else
    certifi's bundle if it is installed."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, *_CA_CANDIDATES):
        if candidate and Path(candidate).is_file():
            return candidate
    try:
        import certifi
    except ImportError:
        return None
    where: str = certifi.where()
    return where


def ffmpeg_input_options(source: str, *, proxy: str, tls: SourceTLS) -> dict[str, str]:
    """The input options that make ffmpeg open `source` under the policy."""
    if not is_http(source):
        return {"protocol_whitelist": FILE_PROTOCOLS}
    options = {"protocol_whitelist": HTTP_PROTOCOLS, "http_proxy": proxy}
    if source.lower().startswith("https:"):
        options.update(_tls_options(tls))
    return options


def probe_options(source: str, *, proxy: str) -> dict[str, str]:
    """The options that make PyAV open `source` under the policy (it ignores unused ones). Its
    TLS ends at the probe proxy, which verifies the source server (`tls_origin`)."""
    if not is_http(source):
        return {"protocol_whitelist": FILE_PROTOCOLS}
    return {"protocol_whitelist": HTTP_PROTOCOLS, "http_proxy": proxy, "tls_verify": "0"}


def _tls_options(tls: SourceTLS) -> dict[str, str]:
    if not tls.verify:
        return {"tls_verify": "0"}
    return {"tls_verify": "1", **({"ca_file": tls.ca_file} if tls.ca_file else {})}


def ffmpeg_env(tls: SourceTLS, environ: Mapping[str, str]) -> dict[str, str]:
    """ffmpeg's environment: no proxy bypass, and the CA bundle for every URL it verifies."""
    env = {k: v for k, v in environ.items() if k not in _PROXY_BYPASS}
    if tls.verify and tls.ca_file:
        env["SSL_CERT_FILE"] = tls.ca_file
    return env


def without_proxy_bypass() -> None:
    """Remove `no_proxy` from this process's environment: PyAV reads it in-process and would
    connect directly to the hosts it names, past the checking proxy."""
    for name in _PROXY_BYPASS:
        os.environ.pop(name, None)
