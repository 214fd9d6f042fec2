"""Contracts other programs rely on: generated schemas match the code, event subjects and ids are
what the documentation says, sources that are the same media share one key."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import jsonschema_rs
import msgspec

from shared.jobs import events as record_events
from shared.messages import asyncapi, events
from shared.messages.records import JobStatus
from shared.nats.subjects import Names
from shared.nats.topology import _event_subject
from shared.sources import rebase_on_jellyfin, redact, rendition_key
from vidmesh import schemas

REPO = Path(__file__).resolve().parent.parent

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"


def test_generated_schemas_match_the_committed_files() -> None:
    from services.gateway import app, openapi  # noqa: F401  (app registers every route)

    schemas.EXTRA.update(openapi.FILES)  # every face's OpenAPI document
    stale = schemas.drift(SCHEMAS)
    assert not stale, f"schemas/ is stale ({stale}); run `vidmesh schemas --write`"


def test_drift_is_detected_when_a_file_differs(tmp_path: Path) -> None:
    schemas.write(tmp_path)
    (tmp_path / "events.json").write_text("{}\n")
    assert schemas.drift(tmp_path) == ["events.json"]


def test_the_asyncapi_document_is_valid_asyncapi_3_and_lists_every_event() -> None:
    """Checked against the official AsyncAPI 3.0.0 JSON Schema (npm @asyncapi/specs)."""
    spec = REPO / "node_modules" / "@asyncapi" / "specs" / "schemas" / "3.0.0-without-$id.json"
    assert spec.is_file(), "run `npm ci` (python3 run.py test does) for @asyncapi/specs"
    validator = jsonschema_rs.validator_for(json.loads(spec.read_text()))
    document = asyncapi.document()
    assert [str(e) for e in validator.iter_errors(document)] == []
    broken = {**document, "channels": {"x": {"address": 5}}}
    assert not validator.is_valid(broken)  # the check can fail
    tags = {m["name"] for m in document["components"]["messages"].values()}
    assert tags == {_tag(cls) for cls in typing.get_args(events.AnyEvent)}
    assert document["channels"]["jobEvents"]["address"] == "{namespace}.evt.job.{jobId}.{kind}"


def _tag(cls: type) -> str:
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    return str(info.tag)


def test_every_event_type_is_in_the_published_schema() -> None:
    text = (SCHEMAS / "events.json").read_text()
    for tag in ("job.accepted", "job.completed", "job.failed", "rendition.succeeded"):
        assert f'"{tag}"' in text


def test_job_events_go_to_documented_subjects_with_revision_based_ids() -> None:
    from shared.jobs import state as jobstate

    job = jobstate.new_job(job_id="abc", owner="u", source="http://h/x", now=1.0)
    event = record_events.job_event(job, 7, created=True)
    assert _event_subject(Names("vidmesh"), event) == "vidmesh.evt.job.abc.accepted"
    assert event.event_id == "job:abc:7"
    assert event.status is JobStatus.QUEUED
    decoded = events.DECODER.decode(events.ENCODER.encode(event))
    assert decoded == event


def test_same_jellyfin_media_from_two_devices_shares_one_rendition_key() -> None:
    a = "http://jf:8096/Videos/42/stream?Static=true&api_key=AAA&DeviceId=phone&PlaySessionId=1"
    b = "http://JF:8096/Videos/42/stream?PlaySessionId=9&DeviceId=tablet&api_key=BBB&Static=true"
    assert rendition_key(a, "optimized", "mp4") == rendition_key(b, "optimized", "mp4")
    assert rendition_key(a, "optimized", "mp4") != rendition_key(a, "optimized", "mkv")
    other = "http://jf:8096/Videos/43/stream?Static=true&api_key=AAA"
    assert rendition_key(a, "optimized", "mp4") != rendition_key(other, "optimized", "mp4")


def test_credentials_never_show_in_redacted_urls() -> None:
    shown = redact("http://user:pw@jf/Videos/1/stream?api_key=SECRET&Static=true")
    assert "SECRET" not in shown and "pw" not in shown and "Static=true" in shown


def test_jellyfin_media_urls_are_rebased_on_the_configured_server() -> None:
    url = "https://public.example/jellyfin/Videos/42/stream?api_key=T"
    assert rebase_on_jellyfin(url, "http://10.0.0.5:8096/") == (
        "http://10.0.0.5:8096/Videos/42/stream?api_key=T"
    )
    assert rebase_on_jellyfin("https://cdn.example/file.mp4", "http://jf") == (
        "https://cdn.example/file.mp4"
    )


def test_credentials_are_scrubbed_from_ffmpeg_messages() -> None:
    from shared.sources import scrub

    text = "Error opening input file http://jf/Videos/1/stream?Static=true&api_key=SECRET.\n"
    assert "SECRET" not in scrub(text) and "Static=true" in scrub(text)
