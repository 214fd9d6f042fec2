"""The probe's https, verified by its proxy: PyAV (libavformat with GnuTLS) verifies a certificate
only where it is handed `tls_verify`, and the URLs a source leads to (HLS/DASH segments, keys,
variant playlists, nested opens) are opened without it. So the probe's proxy ends PyAV's TLS on
127.0.0.1 with a throwaway certificate and opens its own TLS connection to the checked address,
verified against the source CA bundle with the name PyAV asked for: whatever PyAV opens, no
request reaches a server whose certificate did not verify.

ffmpeg verifies every connection itself (OpenSSL, on by default), so its proxies only tunnel.
"""

from __future__ import annotations

import datetime
import ssl
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.media.inputs import SourceTLS


@dataclass(frozen=True, slots=True)
class TLSOrigin:
    """TLS towards PyAV (`local`, any name, never verified by it) and towards sources (`remote`)."""

    local: ssl.SSLContext
    remote: ssl.SSLContext

    @classmethod
    def of(cls, tls: SourceTLS) -> TLSOrigin:
        return cls(_local_context(), remote_context(tls))


def remote_context(tls: SourceTLS) -> ssl.SSLContext:
    """How the proxy checks a source server: the CA bundle and the name, unless turned off."""
    if not tls.verify:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=tls.ca_file)


@lru_cache(maxsize=1)
def _local_context() -> ssl.SSLContext:
    """A server context with a self-signed certificate made for this process (PyAV does not
    check it: the hop is on 127.0.0.1, between this process and its own proxy)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vidmesh probe proxy")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory(prefix="vidmesh-probe-tls-") as folder:
        pem = Path(folder) / "proxy.pem"
        pem.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            + cert.public_bytes(serialization.Encoding.PEM)
        )
        context.load_cert_chain(pem)
    return context
