"""Every blob store behaves the same: a local directory, SeaweedFS's S3 gateway and Azurite's
Blob service, each a real server started once for the session (tests/storage_servers.py).

Google Cloud Storage has no test server here: the fake-gcs-server wheel starts, but obstore's
uploads (XML API) fail against it. GCS is covered by configuration tests instead: the store is
built from its configuration, named without secrets, signs V4 URLs offline with a generated
service-account key (the signature is checked with the public key), and maps the errors a stub
HTTP endpoint answers like GCS's XML API.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qsl, quote, urlsplit

import aiohttp
import msgspec
import pytest
import pytest_asyncio
import yarl
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from shared.blobs.backends import open_store
from shared.blobs.config import StoreConfig, parse_store_url, redacted
from shared.blobs.objects import store_error
from shared.blobs.store import LocalBlobStore
from shared.errors import BadRequest, NotFound, StoreError
from tests.blob_ranges import MIB, check_ranges, read_all
from tests.harness import BUCKET, free_ports
from tests.storage_servers import AzuriteBlob, SeaweedS3


class Backend(NamedTuple):
    """One store under test: its configuration and the secret that must never show."""

    kind: str
    config: StoreConfig
    secret: str


def make_backend(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """A fresh, empty store of `kind` (remote ones: a new prefix in the session's bucket)."""
    prefix = f"t-{uuid.uuid4().hex[:10]}/run"
    if kind == "s3":
        seaweed: SeaweedS3 = request.getfixturevalue("seaweed")
        return Backend("s3", seaweed.config(BUCKET, prefix), seaweed.secret_key)
    if kind == "azure":
        azurite: AzuriteBlob = request.getfixturevalue("azurite")
        config = azurite.config(BUCKET, prefix)
        return Backend("azure", config, config.account_key)
    return Backend("local", StoreConfig(kind="local", path=str(tmp_path / "blobs")), "")


# SeaweedFS and Azurite are servers the session starts: the tests of those backends are slow.
S3 = pytest.param("s3", marks=pytest.mark.slow)
AZURE = pytest.param("azure", marks=pytest.mark.slow)


@pytest.fixture(params=["local", S3, AZURE])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return make_backend(request.param, request, tmp_path)


@pytest.fixture(params=[S3, AZURE])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return make_backend(request.param, request, tmp_path)


def payload(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


async def test_put_file_records_the_size_and_sha256_of_what_was_stored(
    backend: Backend, tmp_path: Path
) -> None:
    store = open_store(backend.config)
    data = payload(3 * MIB + 17)
    source = tmp_path / "out.mp4"
    source.write_bytes(data)

    stored = await store.put_file("outputs/ab/abc/1-1.mp4", source)

    assert (stored.key, stored.size) == ("outputs/ab/abc/1-1.mp4", len(data))
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert (await read_all(store, stored.key, 0, len(data)))[0] == data


async def test_writer_streams_many_chunks_and_hashes_them_on_the_way(backend: Backend) -> None:
    store = open_store(backend.config)
    rng = random.Random(3)
    chunks = [payload(rng.randint(1, 512 * 1024), seed=i) for i in range(48)]  # ~12 MiB: 3 parts
    data = b"".join(chunks)

    writer = await store.writer("outputs/ab/abc/2-1.mkv")
    for chunk in chunks:
        await writer.write(chunk)
    stored = await writer.close()

    assert stored.size == len(data) == await store.size("outputs/ab/abc/2-1.mkv")
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    back, _ = await read_all(store, stored.key, 0, len(data))
    assert hashlib.sha256(back).hexdigest() == stored.sha256


async def test_an_aborted_upload_leaves_nothing_behind(backend: Backend) -> None:
    store = open_store(backend.config)
    writer = await store.writer("outputs/ab/abc/3-1.mp4")
    for i in range(7):  # more than one part: the multipart upload has begun
        await writer.write(payload(MIB, seed=i))

    await writer.abort()
    await writer.abort()  # idempotent

    assert await store.stat("outputs/ab/abc/3-1.mp4") is None
    assert await store.list_blobs() == []
    if backend.kind == "local":
        assert files_under(Path(backend.config.path)) == []


async def test_read_range_streams_exactly_the_bytes_asked_for(
    backend: Backend, tmp_path: Path
) -> None:
    store = open_store(backend.config)
    data = payload(2 * MIB + MIB // 2)
    source = tmp_path / "r.bin"
    source.write_bytes(data)
    key = (await store.put_file("outputs/r.bin", source)).key

    await check_ranges(store, key, data)
    with pytest.raises(NotFound):
        await read_all(store, "outputs/missing.bin", 0, 10)


async def test_stat_size_list_and_delete_agree(backend: Backend, tmp_path: Path) -> None:
    store = open_store(backend.config)
    sizes = {"outputs/ab/one.mp4": 1000, "outputs/ac/two.mp4": 2000, "other/three.txt": 3}
    for key, size in sizes.items():
        source = tmp_path / "src"
        source.write_bytes(payload(size))
        await store.put_file(key, source)

    info = await store.stat("outputs/ab/one.mp4")
    assert info is not None and info.size == 1000 and info.etag.startswith('"')
    assert abs(info.modified - datetime.now().timestamp()) < 300
    listed = {b.key: b.size for b in await store.list_blobs("outputs/")}
    assert listed == {"outputs/ab/one.mp4": 1000, "outputs/ac/two.mp4": 2000}
    assert {b.key for b in await store.list_blobs("outputs/a")} == set(listed)  # not a folder
    assert {b.key: b.size for b in await store.list_blobs()} == sizes

    assert await store.delete("outputs/ab/one.mp4") == 1000
    assert await store.delete("outputs/ab/one.mp4") == 0  # a missing key frees nothing
    assert await store.size("outputs/ab/one.mp4") is None
    assert await store.stat("outputs/ab/one.mp4") is None
    assert {b.key for b in await store.list_blobs("outputs/")} == {"outputs/ac/two.mp4"}


async def test_presign_gives_a_url_that_answers_a_range_request(
    backend: Backend, tmp_path: Path
) -> None:
    store = open_store(backend.config)
    data = payload(100_000)
    source = tmp_path / "p.mp4"
    source.write_bytes(data)
    key = (await store.put_file("outputs/p.mp4", source)).key

    url = await store.presign(key, 300)

    if backend.kind == "local":
        assert url is None and store.local_path(key) == Path(backend.config.path) / key
        return
    assert url is not None and backend.secret not in url
    async with (
        aiohttp.ClientSession() as session,
        session.get(yarl.URL(url, encoded=True), headers={"Range": "bytes=10-19"}) as resp,
    ):
        assert resp.status == 206
        assert await resp.read() == data[10:20]


async def test_check_writable_passes_with_good_credentials(backend: Backend) -> None:
    store = open_store(backend.config)
    await store.check_writable()
    assert await store.list_blobs() == []  # the probe is gone


async def test_wrong_credentials_fail_for_good_naming_the_store(remote: Backend) -> None:
    if remote.kind == "s3":
        wrong = msgspec.structs.replace(remote.config, secret_access_key="not-the-secret")
    else:
        wrong = msgspec.structs.replace(
            remote.config, account_key=base64.b64encode(os.urandom(64)).decode()
        )
    store = open_store(wrong)

    with pytest.raises(StoreError) as caught:
        await store.check_writable()

    assert caught.value.retryable_now is False
    assert caught.value.message.startswith(f"The store {store.name} refused the credentials (403")
    secret = wrong.secret_access_key or wrong.account_key
    assert secret not in caught.value.message + str(caught.value.details)


async def test_a_missing_bucket_fails_for_good(remote: Backend) -> None:
    store = open_store(msgspec.structs.replace(remote.config, bucket="no-such-bucket"))
    with pytest.raises(StoreError) as caught:
        await store.check_writable()
    noun = "container" if remote.kind == "azure" else "bucket"
    assert caught.value.retryable_now is False
    assert caught.value.message.startswith(f"The store {store.name} has no such {noun} (404")


async def test_an_unreachable_store_fails_so_that_a_retry_may_help(remote: Backend) -> None:
    closed = f"http://127.0.0.1:{free_ports(1)[0]}"
    if remote.kind == "azure":
        closed += "/devstoreaccount1"
    store = open_store(msgspec.structs.replace(remote.config, endpoint=closed))
    with pytest.raises(StoreError) as caught:
        await store.check_writable()
    assert caught.value.retryable_now is True
    assert caught.value.message == f"The store {store.name} could not be reached."


@pytest.mark.parametrize("key", ["../escape", "a/../../b", "/etc/passwd", "a//b", "./a", ""])
async def test_keys_that_could_escape_the_store_are_refused(backend: Backend, key: str) -> None:
    store = open_store(backend.config)
    with pytest.raises(BadRequest):
        await store.stat(key)
    with pytest.raises(BadRequest):
        await store.writer(key)
    with pytest.raises(BadRequest):
        await store.delete(key)
    with pytest.raises(BadRequest):
        await read_all(store, key, 0, 1)
    with pytest.raises(BadRequest):
        await store.presign(key, 60)


def test_names_logs_and_reprs_never_carry_secrets(backend: Backend) -> None:
    store = open_store(backend.config)
    prefix = backend.config.prefix
    expected = {
        "local": f"local:{backend.config.path}",
        "s3": f"s3://{BUCKET}/{prefix}",
        "azure": f"az://devstoreaccount1/{BUCKET}/{prefix}",
    }[backend.kind]
    assert (store.name, store.kind) == (expected, backend.kind)
    if backend.secret:
        for shown in (store.name, repr(store), repr(backend.config), str(redacted(backend.config))):
            assert backend.secret not in shown


async def test_an_azure_store_with_a_sas_token_works_but_hands_out_no_signed_urls(
    azurite: AzuriteBlob,
) -> None:
    sas = azurite.container_sas(BUCKET)
    config = msgspec.structs.replace(
        azurite.config(BUCKET, f"t-{uuid.uuid4().hex[:10]}"), account_key="", sas_token=sas
    )
    store = open_store(config)
    await store.check_writable()
    writer = await store.writer("outputs/s.mp4")
    await writer.write(b"sas" * 1000)
    assert (await writer.close()).size == 3000
    assert await store.presign("outputs/s.mp4", 60) is None  # it would have to give away the SAS
    assert sas not in repr(config) and redacted(config)["sas_token"] == "***"


async def test_the_environment_does_not_change_a_configured_s3_store(
    seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", "stray-token")
    monkeypatch.setenv("AWS_SKIP_SIGNATURE", "true")
    monkeypatch.setenv("AWS_ENDPOINT", "http://127.0.0.1:1")
    await open_store(seaweed.config(BUCKET, f"t-{uuid.uuid4().hex[:10]}")).check_writable()


async def test_an_azure_key_in_the_environment_never_stands_in_for_a_configured_sas(
    azurite: AzuriteBlob, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", azurite.config(BUCKET).account_key)
    bogus = msgspec.structs.replace(
        azurite.config(BUCKET, "t"), account_key="", sas_token="sv=2023-11-03&sig=bogus"
    )
    with pytest.raises(StoreError) as caught:
        await open_store(bogus).check_writable()
    assert caught.value.retryable_now is False and "refused the credentials" in caught.value.message


def test_a_local_store_is_the_directory_it_names(tmp_path: Path) -> None:
    store = open_store(parse_store_url(f"file://{tmp_path}/blobs"))
    assert isinstance(store, LocalBlobStore) and store.name == f"local:{tmp_path}/blobs"


@pytest.mark.parametrize(
    ("url", "kind", "bucket", "prefix"),
    [
        ("s3://videos/out/", "s3", "videos", "out"),
        ("gs://media", "gcs", "media", ""),
        ("az://container/a/b", "azure", "container", "a/b"),
        ("/srv/blobs", "local", "", ""),
    ],
)
def test_store_urls_name_the_backend_without_credentials(
    url: str, kind: str, bucket: str, prefix: str
) -> None:
    config = parse_store_url(url)
    assert (config.kind, config.bucket, config.prefix) == (kind, bucket, prefix)


@pytest.mark.parametrize(
    "url", ["ftp://x/y", "s3://", "s3://key:secret@bucket/p", "relative/path", "s3://b/../x"]
)
def test_store_urls_that_cannot_work_are_refused(url: str) -> None:
    with pytest.raises(BadRequest):
        parse_store_url(url)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("bucket", "o*\u00a9h"),
        ("region", "us-east-1\u00e5"),
        ("endpoint", "https://70\u00aaPz"),
        ("endpoint", "https://host name/"),
        ("endpoint", "https://OD[CJ"),
        ("endpoint", "http://host:99999/"),
        ("access_key_id", "key\u00e9"),
        ("secret_access_key", "secret with space"),
        ("session_token", "tok\n"),
        ("prefix", "out\x01"),
    ],
)
async def test_names_and_credentials_that_cannot_go_into_a_request_are_refused(
    field: str, value: str
) -> None:
    """Non-ASCII hosts and header values are a clear 400, never a crash in the signer."""
    good = {"bucket": "bucket", "access_key_id": "key", "secret_access_key": "secret"}
    config = StoreConfig(kind="s3", allow_http=True, **{**good, field: value})
    with pytest.raises(BadRequest) as refused:
        await open_store(config).check_writable()
    assert field.split("_")[0] in refused.value.message
    if field in ("access_key_id", "secret_access_key", "session_token"):
        assert value not in refused.value.message


@pytest.mark.parametrize(
    ("text", "retryable", "words"),
    [
        ("Server returned non-2xx status code: 507 Insufficient Storage", True, "is full (507)"),
        ("status code: 403 Forbidden: <Error><Code>QuotaExceeded</Code>", True, "is full"),
        ("status code: 403 Forbidden: <Code>AccessDenied</Code>", False, "refused the credent"),
        ("status code: 404 Not Found: <Code>NoSuchBucket</Code>", False, "no such bucket"),
        ("status code: 503 Service Unavailable: <Code>SlowDown</Code>", True, "failing right now"),
        ("status code: 429 Too Many Requests", True, "failing right now (429)"),
        ("status code: 400 Bad Request: <Code>InvalidArgument</Code>", False, "refused the req"),
        ("HTTP error: error sending request (tcp connect error)", True, "could not be reached"),
        ("Bulk delete request failed for key k: not authorized (code: 403)", False, "refused the"),
    ],
)
def test_backend_errors_become_reasons_a_user_can_act_on(
    text: str, retryable: bool, words: str
) -> None:
    error = store_error("s3://videos/out", RuntimeError(text + " http://h/p?sig=SECRET"), "write")
    assert error.retryable_now is retryable
    assert error.message.startswith("The store s3://videos/out ") and words in error.message
    assert "SECRET" not in error.message + str(error.details)


# --- Google Cloud Storage: configuration tests (no server; see the module docstring) ---


@pytest.fixture(scope="module")
def service_account() -> tuple[str, rsa.RSAPrivateKey]:
    """A syntactically valid service-account key with a fresh RSA key (no Google account)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    text = json.dumps({
        "type": "service_account",
        "project_id": "vidmesh-test",
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": "uploader@vidmesh-test.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": "https://oauth2.googleapis.com/token",
    })  # fmt: skip
    return text, key


def gcs_config(service_account: tuple[str, rsa.RSAPrivateKey], **changes: object) -> StoreConfig:
    config = StoreConfig(
        kind="gcs",
        bucket="media",
        prefix="out/v1",
        service_account_key=service_account[0],
        max_retries=0,
    )
    return msgspec.structs.replace(config, **changes)


def test_a_gcs_store_is_built_from_its_configuration_and_named_without_secrets(
    service_account: tuple[str, rsa.RSAPrivateKey],
) -> None:
    config = gcs_config(service_account)
    store = open_store(config)
    assert (store.name, store.kind) == ("gs://media/out/v1", "gcs")
    assert store.local_path("outputs/x.mp4") is None
    assert redacted(config)["service_account_key"] == "***"
    for shown in (store.name, repr(store), repr(config), str(redacted(config))):
        assert "PRIVATE KEY" not in shown


async def test_a_gcs_presigned_url_is_v4_signed_by_the_service_account(
    service_account: tuple[str, rsa.RSAPrivateKey],
) -> None:
    store = open_store(gcs_config(service_account))

    url = await store.presign("outputs/x.mp4", 600)

    assert url is not None
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    assert (parts.scheme, parts.netloc, parts.path) == (
        "https",
        "storage.googleapis.com",
        "/media/out/v1/outputs/x.mp4",
    )
    assert query["X-Goog-Algorithm"] == "GOOG4-RSA-SHA256"
    assert query["X-Goog-Expires"] == "600"
    assert query["X-Goog-SignedHeaders"] == "host"
    email, date, region, service, kind = query["X-Goog-Credential"].split("/")
    assert email == "uploader@vidmesh-test.iam.gserviceaccount.com"
    # The signature verifies with the service account's public key (GCS V4 signing).
    signed = {k: v for k, v in query.items() if k != "X-Goog-Signature"}
    canonical_query = "&".join(
        f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in sorted(signed.items())
    )
    canonical = "\n".join(
        ["GET", parts.path, canonical_query, f"host:{parts.netloc}", "", "host", "UNSIGNED-PAYLOAD"]
    )
    to_sign = "\n".join([
        "GOOG4-RSA-SHA256",
        query["X-Goog-Date"],
        f"{date}/{region}/{service}/{kind}",
        hashlib.sha256(canonical.encode()).hexdigest(),
    ])  # fmt: skip
    service_account[1].public_key().verify(
        bytes.fromhex(query["X-Goog-Signature"]),
        to_sign.encode(),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )


@pytest_asyncio.fixture
async def gcs_stub() -> AsyncIterator[tuple[str, list[tuple[int, str]]]]:
    """An HTTP endpoint that answers every request with the next (status, XML error code)."""
    answers: list[tuple[int, str]] = []

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        status, code = answers.pop(0) if answers else (500, "InternalError")
        body = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>m</Message></Error>"
        return web.Response(status=status, text=body, content_type="application/xml")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", answers
    await runner.cleanup()


@pytest.mark.parametrize(
    ("status", "code", "retryable", "words"),
    [
        (403, "AccessDenied", False, "refused the credentials (403 AccessDenied)"),
        (401, "AuthenticationRequired", False, "refused the credentials (401"),
        (404, "NoSuchBucket", False, "no such bucket (404 NoSuchBucket)"),
        (503, "ServiceUnavailable", True, "failing right now (503"),
        (507, "InsufficientStorage", True, "is full (507"),
    ],
)
async def test_gcs_errors_are_mapped_to_clear_reasons(
    service_account: tuple[str, rsa.RSAPrivateKey],
    gcs_stub: tuple[str, list[tuple[int, str]]],
    status: int,
    code: str,
    retryable: bool,
    words: str,
) -> None:
    url, answers = gcs_stub
    answers.append((status, code))
    store = open_store(gcs_config(service_account, endpoint=url, allow_http=True))

    with pytest.raises(StoreError) as caught:
        await store.check_writable()

    assert caught.value.retryable_now is retryable
    assert (
        caught.value.message.startswith("The store gs://media/out/v1 ")
        and words in caught.value.message
    )


async def test_an_unreachable_gcs_endpoint_fails_so_that_a_retry_may_help(
    service_account: tuple[str, rsa.RSAPrivateKey],
) -> None:
    closed = f"http://127.0.0.1:{free_ports(1)[0]}"
    store = open_store(gcs_config(service_account, endpoint=closed, allow_http=True))
    with pytest.raises(StoreError) as caught:
        await store.check_writable()
    assert caught.value.retryable_now is True and "could not be reached" in caught.value.message
