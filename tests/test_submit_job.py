"""What a `SubmitJob` command means, without NATS: the job it asks for, the id an
Idempotency-Key names, the event a stored revision reads as, the guards faces ask jobstate, and
that the gateway cannot write a job record (its modules do not import the record store)."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import msgspec
import pytest

from services.gateway.submit import idempotent_job_id
from shared.jobs import state as jobstate
from shared.jobs.store import stored_event
from shared.media import builtin
from shared.media.presets import within_ceilings
from shared.messages import commands as cmd
from shared.messages import events
from shared.messages.records import JobStatus

REPO = Path(__file__).resolve().parent.parent


def submission(**fields: object) -> cmd.SubmitJob:
    defaults: dict[str, object] = {
        "command_id": "c1",
        "by": "user-1",
        "at": 1_700_000_000.0,
        "job_id": "job-1",
        "owner": "user-1",
        "source": "https://media.example.com/a.mkv",
        "spec": builtin("h264-720p"),
    }
    return cmd.SubmitJob(**{**defaults, **fields})  # type: ignore[arg-type]


def test_a_submission_asks_for_a_queued_job_accepted_when_it_was_asked_for() -> None:
    job = jobstate.submitted_job(submission(client="streamyfin", device_id="dev-1", item_id="i"))
    assert job.status is JobStatus.QUEUED and job.id == "job-1" and job.owner == "user-1"
    assert job.created_at == job.updated_at == 1_700_000_000.0
    assert (job.client, job.device_id, job.item_id) == ("streamyfin", "dev-1", "i")
    assert job.container == "mp4" and job.spec == builtin("h264-720p")


def test_a_submission_in_a_batch_waits_paused() -> None:
    job = jobstate.submitted_job(submission(batch="b1", paused=True))
    assert job.status is JobStatus.PAUSED and job.batch == "b1"


def test_the_accepted_spec_is_the_one_within_the_fleets_ceilings() -> None:
    spec = builtin("h264-1080p")
    capped = within_ceilings(spec, max_height=480, max_video_bitrate_kbps=None)
    job = jobstate.submitted_job(submission(spec=spec), capped)
    assert job.spec == capped and job.spec != spec


def test_a_submission_travels_as_a_scheduler_command_on_its_own_subject_kind() -> None:
    command = submission(item={"Id": "i", "Name": "Clip"}, request_sha256="ab" * 32)
    decoded = cmd.SCHEDULER_DECODER.decode(cmd.ENCODER.encode(command))
    assert decoded == command
    assert cmd.kind(command) == cmd.kind(cmd.SubmitJob) == "job_submit"
    assert msgspec.json.decode(cmd.ENCODER.encode(command))["type"] == "job.submit"


def test_an_idempotency_key_names_one_job_per_owner() -> None:
    assert idempotent_job_id("ann", "order-42") == idempotent_job_id("ann", "order-42")
    assert idempotent_job_id("ann", "order-42") != idempotent_job_id("ben", "order-42")
    assert idempotent_job_id("ann", "order-42") != idempotent_job_id("ann", "order-43")


def test_a_stored_revision_reads_as_accepted_only_until_the_job_first_changes() -> None:
    job = jobstate.submitted_job(submission())
    assert isinstance(stored_event(job, 1), events.JobAccepted)
    later = jobstate.hold(job, job.created_at + 1)
    assert isinstance(stored_event(later, 2), events.JobHeld)
    requeued = jobstate.unhold(later, job.created_at + 2)
    assert isinstance(stored_event(requeued, 3), events.JobQueued)


@pytest.mark.parametrize("status", list(JobStatus))
def test_the_guards_faces_ask_agree_with_the_transitions(status: JobStatus) -> None:
    now = time.time()
    job = msgspec.structs.replace(jobstate.submitted_job(submission()), status=status)
    for allowed, transition in (
        (jobstate.can_retry(job), lambda: jobstate.retry_job(job, now)),
        (jobstate.can_restart(job), lambda: jobstate.restart_job(job, now, "n")),
        (jobstate.can_confirm_download(job), lambda: jobstate.confirm_download(job, 60, now)),
    ):
        try:
            transition()
        except jobstate.InvalidTransition:
            assert not allowed, status
        else:
            assert allowed, status
    assert jobstate.is_active(job) == (status in jobstate.ACTIVE)
    assert jobstate.can_release(job) == (status is not JobStatus.REMOVED)


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_no_gateway_module_reaches_the_job_record_writers() -> None:
    gateway = REPO / "services" / "gateway"
    for path in sorted(gateway.rglob("*.py")):
        imported = _imports(path)
        assert "shared.jobs.store" not in imported, path
        assert not any(name.endswith(".RecordStore") for name in imported), path


def test_the_streamyfin_face_imports_no_other_face() -> None:
    faces = REPO / "services" / "gateway" / "faces"
    for path in sorted((faces / "streamyfin").rglob("*.py")):
        others = {m for m in _imports(path) if m.startswith("services.gateway.faces.")}
        assert all(m.startswith("services.gateway.faces.streamyfin") for m in others), path
