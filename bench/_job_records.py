"""Job records as a server that has run for months holds them: built through the state machine
(`shared.jobs.state`), from many owners and devices, on Jellyfin items and stream URLs, nearly all
of them finished (completed, downloaded and removed, failed, cancelled) with their probes,
outputs and errors, a few still queued. The same `n` gives the same records."""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Iterator
from typing import Any

from shared.jobs import state as jobstate
from shared.media.presets import builtin
from shared.media.probe import ProbeResult, StreamInfo
from shared.messages import commands as cmd
from shared.messages.records import JobRecord, Output
from shared.wire import JobError

JOBS_PER_DEVICE = 40
DEVICES_PER_OWNER = 2
# Outputs are kept a year: no record expires or is purged while the benchmark measures.
KEEP_SECONDS = 365 * 86_400.0
SHOWS = ("The Long Road", "Harbour Lights", "Quiet Planet", "Night Shift", "Salt and Stone")
FILMS = ("A Winter Crossing", "The Glass Orchard", "Northbound", "Paper Moons", "Low Tide")
# What the histories end as, in shares of every hundred jobs (a long-running server's mix).
OUTCOMES = (
    ("removed", 50),  # completed, downloaded, let go (the Streamyfin app deletes after download)
    ("completed", 29),
    ("cancelled", 10),
    ("failed", 10),
    ("queued", 1),  # submitted, not placed yet: the scheduler places it when it starts
)


def owner_of(n: int) -> str:
    """The user id owning the jobs of device `n // DEVICES_PER_OWNER`."""
    return uuid.UUID(int=n // DEVICES_PER_OWNER + 1).hex


def device_of(job_number: int) -> int:
    return job_number // JOBS_PER_DEVICE


def device_name(n: int) -> str:
    return f"streamyfin-device-{n:05d}"


def _item(rng: random.Random, n: int) -> dict[str, Any]:
    """A Jellyfin item as the Streamyfin app sends it with a job (the fields it reads back)."""
    item_id = hashlib.md5(f"item-{n}".encode()).hexdigest()
    if rng.random() < 0.6:
        season, episode = rng.randint(1, 6), rng.randint(1, 12)
        return {
            "Id": item_id,
            "Name": f"Episode {episode}",
            "Type": "Episode",
            "SeriesName": rng.choice(SHOWS),
            "SeasonName": f"Season {season}",
            "ParentIndexNumber": season,
            "IndexNumber": episode,
            "RunTimeTicks": rng.randint(20, 60) * 60 * 10_000_000,
        }
    return {
        "Id": item_id,
        "Name": rng.choice(FILMS),
        "Type": "Movie",
        "ProductionYear": rng.randint(1970, 2026),
        "RunTimeTicks": rng.randint(80, 150) * 60 * 10_000_000,
    }


def _source(rng: random.Random, item_id: str) -> str:
    """A Jellyfin stream URL, as the app submits it."""
    token = hashlib.sha1(str(rng.random()).encode()).hexdigest()
    return (
        f"https://jellyfin.example.net/Videos/{item_id}/stream.mkv?static=true"
        f"&mediaSourceId={item_id}&api_key={token}"
    )


def _probe(rng: random.Random, duration: float) -> ProbeResult:
    height = rng.choice((720, 1080, 2160))
    streams = [
        StreamInfo(
            index=0,
            kind="video",
            codec=rng.choice(("h264", "hevc")),
            profile="Main",
            width=height * 16 // 9,
            height=height,
            pix_fmt="yuv420p",
            frame_rate=rng.choice((23.976, 25.0, 29.97)),
            default=True,
        ),
        StreamInfo(
            index=1, kind="audio", codec="eac3", channels=6, sample_rate=48000, language="eng"
        ),
        StreamInfo(index=2, kind="audio", codec="aac", channels=2, sample_rate=48000),
        StreamInfo(index=3, kind="subtitle", codec="subrip", language="eng"),
    ]
    return ProbeResult(
        container="matroska,webm",
        duration=duration,
        bit_rate=rng.randint(2_000_000, 20_000_000),
        size=rng.randint(300_000_000, 9_000_000_000),
        streams=streams,
    )


def _output(rng: random.Random, rendition: str, duration: float) -> Output:
    return Output(
        blob=f"outputs/{rendition}.mp4",
        size=rng.randint(100_000_000, 3_000_000_000),
        sha256=hashlib.sha256(rendition.encode()).hexdigest(),
        container="mp4",
        mime="video/mp4",
        mode=rng.choice(("transcode", "copy")),
        duration=duration,
        video="h264",
        audio="aac",
    )


def job_record(n: int, now: float) -> JobRecord:
    """Job number `n`: its device is `n // JOBS_PER_DEVICE`, its history drawn from OUTCOMES."""
    rng = random.Random(n)
    device = device_of(n)
    item = _item(rng, n)
    submitted_at = now - rng.uniform(3_600, 90 * 86_400)
    command = cmd.SubmitJob(
        command_id=uuid.UUID(int=rng.getrandbits(128)).hex,
        by=owner_of(device),
        at=submitted_at,
        job_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        owner=owner_of(device),
        owner_name=f"viewer{device // DEVICES_PER_OWNER}",
        client="streamyfin",
        device_id=device_name(device),
        item_id=item["Id"],
        item=item,
        source=_source(rng, item["Id"]),
        profile="optimized",
        spec=builtin("optimized"),
        duration_hint=item["RunTimeTicks"] / 10_000_000,
    )
    job = jobstate.submitted_job(command)
    outcome = rng.choices([o for o, _ in OUTCOMES], [w for _, w in OUTCOMES])[0]
    if outcome == "queued":
        return job
    if outcome == "cancelled" and rng.random() < 0.5:
        return jobstate.cancel(job, submitted_at + 5)
    key = jobstate.rendition_key_of(job)
    rendition = jobstate.new_rendition(key, job, submitted_at + 0.01)
    job = jobstate.attach(job, rendition, submitted_at + 0.01, shared=rng.random() < 0.1)
    duration = job.duration_hint or 1_800.0
    began = submitted_at + rng.uniform(1, 600)
    rendition = jobstate.claim(jobstate.dispatch(rendition, began), "transcoder-1", began)
    job = jobstate.start(job, rendition, began)
    if outcome == "cancelled":
        return jobstate.cancel(job, began + 30)
    ended = began + duration / rng.uniform(2, 8)
    if outcome == "failed":
        error = JobError(
            code="source_unreadable",
            reason="The source could not be read.",
            detail="HTTP error 404 Not Found",
        )
        return jobstate.fail(job, error, ended, attempts=rng.randint(1, 3))
    probe = _probe(rng, duration)
    job = jobstate.complete(job, _output(rng, key, duration), KEEP_SECONDS, ended, 1, probe)
    if outcome == "removed":
        return jobstate.release(
            job, remove_file_now=False, keep_seconds=KEEP_SECONDS, now=ended + 600
        )
    return job


def job_records(count: int, now: float) -> Iterator[JobRecord]:
    """Jobs 0 .. count-1."""
    return (job_record(n, now) for n in range(count))
