"""The erasure queue's bound over HTTP (in-process: nothing here needs the worker, and
without one nothing leaves the queue): MAX_QUEUED jobs are taken in order, the next
request is 503 ``erasure-queue-full`` with Retry-After, queues nothing, and still refuses
that user's later events (the suppression comes first, and the answer says so)."""

from __future__ import annotations

import hashlib

import pytest

from event_analytics.store.forget_jobs import MAX_QUEUED
from tests.backends import Backend
from tests.helpers import event
from tests.inproc import in_process

ADMIN = "admin-key-0123456789abcdef"
WRITE = "write-key-0123456789abcdef"
PREFIX = "forgetq:"


def test_the_queue_takes_its_bound_then_refuses_and_still_suppresses(
    engine: Backend, db: Backend, tmp_path_factory: pytest.TempPathFactory
) -> None:
    settings = engine.settings(
        data_dir=tmp_path_factory.mktemp(f"forgetq-{engine.kind}") / "data",
        key_prefix=PREFIX,
        admin_keys=(ADMIN,),
        write_keys=(WRITE,),
    )
    admin = {"Authorization": f"Bearer {ADMIN}"}
    write = {"Authorization": f"Bearer {WRITE}"}
    with in_process(settings, engine.env | {"EA_KEY_PREFIX": PREFIX}) as svc:
        url = f"{svc.url}/api/v1/admin/forget"
        jobs = []
        for i in range(MAX_QUEUED):
            queued = svc.http.post(url, json={"user_ids": [f"user-{i}"]}, headers=admin)
            assert queued.status_code == 202, queued.text
            assert queued.json()["state"] == "queued"
            assert queued.json()["position"] == i + 1
            jobs.append(queued.json()["id"])
        full = svc.http.post(url, json={"user_ids": ["one-too-many"]}, headers=admin)
        assert full.status_code == 503, full.text
        assert full.headers["content-type"].startswith("application/problem+json")
        assert full.headers["retry-after"] == "60"
        problem = full.json()
        assert problem["type"].endswith("erasure-queue-full")
        assert f"{MAX_QUEUED} erasure jobs" in problem["detail"]
        assert "refused" in problem["detail"] and "not erased" in problem["detail"]
        assert "one-too-many" not in full.text
        # Queued nothing: the first job is still first, the last still last.
        for place, job_id in ((1, jobs[0]), (MAX_QUEUED, jobs[-1])):
            got = svc.http.get(f"{url}/{job_id}", headers=admin)
            assert got.status_code == 200, got.text
            assert got.json()["position"] == place
            assert got.json()["user_sha256"] == [
                hashlib.sha256(f"user-{place - 1}".encode()).hexdigest()
            ]
        # The refused request's user is refused from now on, as its detail says.
        late = svc.http.post(f"{svc.url}/events", json=event(user="one-too-many"), headers=write)
        assert late.status_code == 422, late.text
        assert late.json()["errors"][0]["code"] == "user_erased"
        other = svc.http.post(f"{svc.url}/events", json=event(user="someone-else"), headers=write)
        assert other.status_code == 201, other.text
