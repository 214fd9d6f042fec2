"""A job's own transcode sessions (`GET /api/jobs/{id}/sessions`): its owner sees the pipeline and
the exact ffmpeg command that ran, or why it failed; nobody else but moderators sees them."""

from __future__ import annotations

from typing import Any

from shared.sources import scrub
from tests.harness import ALICE, Api, System, eventually
from tests.jellyfin_standin import JellyfinStandIn

SIGNED_TOKEN = "signed-secret-42"


async def _moderator(system: System, admin_api: Api) -> Api:
    await admin_api.ok(
        "POST",
        "/api/admin/users",
        201,
        json={"username": "mod", "password": "password-123", "role": "moderator"},
    )
    return await Api(admin_api.session, system.url).as_user("mod", register=False)


async def _ended_sessions(api: Api, job_id: str) -> list[dict[str, Any]]:
    """The job's sessions once none of them is running any more."""

    async def ended() -> list[dict[str, Any]] | None:
        found: list[dict[str, Any]] = await api.ok("GET", f"/api/jobs/{job_id}/sessions")
        return found if found and all(d["session"]["state"] != "running" for d in found) else None

    return await eventually(ended, what=f"job {job_id}'s sessions to end")


def test_a_signed_urls_token_and_api_key_are_scrubbed_from_an_argv_argument() -> None:
    # Given the -i argument of a signed source URL
    argv_arg = f"http://media.example/v.mkv?api_key={ALICE}&token={SIGNED_TOKEN}&Static=true"
    # When it is scrubbed for a session record
    shown = scrub(argv_arg)
    # Then the credentials are masked and the rest of the URL stays readable
    assert ALICE not in shown and SIGNED_TOKEN not in shown
    assert shown == "http://media.example/v.mkv?api_key=***&token=***&Static=true"


async def test_the_owner_sees_the_pipeline_and_the_ffmpeg_command_of_a_completed_job(
    system: System, ann: Api, jellyfin: JellyfinStandIn
) -> None:
    # Given Ann's job from a signed URL (a Jellyfin token and a signing token), completed
    source = jellyfin.stream_url("hevc", ALICE) + f"&token={SIGNED_TOKEN}"
    job = await ann.ok("POST", "/api/jobs", 201, json={"source": source})
    assert (await ann.wait_job(job["id"], "completed", "failed"))["status"] == "completed"
    # When she asks for the job's sessions
    (detail,) = await _ended_sessions(ann, job["id"])
    # Then she sees the one attempt: what ran, how, and that it succeeded
    session = detail["session"]
    assert session["state"] == "succeeded" and session["jobs"] == [job["id"]]
    assert session["pipeline"] == "cpu" and session["pipeline_reason"]
    argv = session["argv"]
    assert isinstance(argv, list) and "ffmpeg" in argv[0] and "-i" in argv
    assert session["output"]["sha256"] and session["ended_at"] >= session["started_at"]
    # and no credential of the source, anywhere in it
    shown = str(detail)
    assert ALICE not in shown and SIGNED_TOKEN not in shown
    assert "api_key=***" in " ".join(argv)


async def test_a_failed_job_shows_the_attempt_and_its_error(
    system: System, ann: Api, jellyfin: JellyfinStandIn
) -> None:
    # Given Ann's job whose source does not exist
    source = jellyfin.stream_url("no-such-item", ALICE)
    job = await ann.ok("POST", "/api/jobs", 201, json={"source": source})
    failed = await ann.wait_job(job["id"], "failed", "completed", timeout=60)
    assert failed["status"] == "failed"
    # When she asks for its sessions
    sessions = await _ended_sessions(ann, job["id"])
    # Then each attempt is there, newest first, failed with its error
    assert [d["session"]["attempt"] for d in sessions] == sorted(
        (d["session"]["attempt"] for d in sessions), reverse=True
    )
    newest = sessions[0]["session"]
    assert newest["state"] == "failed" and newest["error"], newest
    assert ALICE not in str(sessions)


async def test_only_the_owner_and_moderators_read_a_jobs_sessions(
    system: System, ann: Api, ben: Api, admin_api: Api, jellyfin: JellyfinStandIn
) -> None:
    # Given Ann's completed job and a moderator
    job = await ann.ok(
        "POST", "/api/jobs", 201, json={"source": jellyfin.stream_url("fits", ALICE)}
    )
    await ann.wait_job(job["id"], "completed", "failed")
    (own,) = await _ended_sessions(ann, job["id"])
    mod = await _moderator(system, admin_api)
    # When Ben asks for them, they are not found, as if the job did not exist
    status, body, _ = await ben.call("GET", f"/api/jobs/{job['id']}/sessions")
    assert status == 404 and body["error"]["code"] == "not_found", body
    # Then a moderator and an administrator read the same sessions as Ann
    for staff in (mod, admin_api):
        (seen,) = await staff.ok("GET", f"/api/jobs/{job['id']}/sessions")
        assert seen["session"]["id"] == own["session"]["id"]
        assert seen["session"]["argv"] == own["session"]["argv"]
    # and the administrators' own view of that session is the same document
    admin_view = await admin_api.ok("GET", f"/api/admin/transcode-sessions/{own['session']['id']}")
    assert admin_view == own


async def test_an_unknown_job_is_404_and_a_job_not_yet_run_has_no_sessions(
    system: System, ann: Api, jellyfin: JellyfinStandIn
) -> None:
    # Given an id that names no job
    status, body, _ = await ann.call("GET", "/api/jobs/no-such-job/sessions")
    # Then it is a 404 in the JSON error envelope
    assert status == 404 and body["error"]["code"] == "not_found" and body["error"]["message"]
    # And given a paused job, which has not run yet
    bulk = await ann.ok(
        "POST",
        "/api/jobs/bulk",
        201,
        json={"jobs": [{"source": jellyfin.stream_url("fits", ALICE)}], "paused": True},
    )
    (job_id,) = [item["job"]["id"] for item in bulk["results"]]
    # Then its sessions are an empty list
    assert await ann.ok("GET", f"/api/jobs/{job_id}/sessions") == []


async def test_a_shared_renditions_session_shows_another_user_none_of_the_first_users_jobs(
    system: System, ann: Api, ben: Api, jellyfin: JellyfinStandIn
) -> None:
    # Given Ann's completed job, and Ben's job for the same media, served by the same encode
    source = jellyfin.stream_url("fits", ALICE)
    first = await ann.ok("POST", "/api/jobs", 201, json={"source": source})
    await ann.wait_job(first["id"], "completed")
    (anns,) = await _ended_sessions(ann, first["id"])
    second = await ben.ok("POST", "/api/jobs", 201, json={"source": source})
    assert (await ben.wait_job(second["id"], "completed", "failed"))["status"] == "completed"
    # When Ben asks for his job's sessions
    (bens,) = await ben.ok("GET", f"/api/jobs/{second['id']}/sessions")
    # Then he sees the encode that made his output, without Ann's job id or her user id
    assert bens["session"]["id"] == anns["session"]["id"]
    assert bens["session"]["argv"] == anns["session"]["argv"]
    assert anns["session"]["owner"] and anns["session"]["jobs"] == [first["id"]]
    assert bens["session"]["owner"] == "" and bens["session"]["jobs"] == []
    assert first["id"] not in str(bens) and anns["session"]["owner"] not in str(bens)
