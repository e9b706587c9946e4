"""The jobs and groups routes through a real uvicorn server on a loopback port, with an
in-process worker running the jobs: submit (calls, chains, ids, lanes, delays, attempts),
poll, list with a cursor, cancel, count, clean up; groups with a callback, progress and a
filtered retry of the failed members; and every bad request's 4xx, storing nothing."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

import redbatch
from redbatch.service import create_app
from redbatch.stores.base import Store
from tests.live_service import live_server
from tests.test_service import AUTH, TOKEN, assert_error

DEADLINE = 15.0


class Calls:
    """What the group callbacks were called with, with a wait on a condition, not a sleep."""

    def __init__(self) -> None:
        self.done: list[redbatch.GroupDone] = []
        self.changed = threading.Condition()

    def record(self, done: redbatch.GroupDone) -> None:
        with self.changed:
            self.done.append(done)
            self.changed.notify_all()

    def wait_for(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.done) >= count, DEADLINE), self.done


def work_queue(store: Store, calls: Calls) -> redbatch.Jobs:
    jobs = redbatch.Jobs(store, "work", max_attempts=2, lease=5, backoff=0.01)

    @jobs.function
    def echo(params: Any, ctx: redbatch.JobContext) -> Any:
        ctx.progress(0.5, "half way")
        return params

    @jobs.function
    def add_one(params: int, ctx: redbatch.JobContext) -> int:
        return params + 1

    @jobs.function
    def fail(params: dict[str, str], ctx: redbatch.JobContext) -> None:
        raise RuntimeError(params["error"])

    @jobs.function
    def wait_for_cancel(params: Any, ctx: redbatch.JobContext) -> None:
        deadline = time.monotonic() + DEADLINE
        while not ctx.cancelled:  # reads the record about once a second
            assert time.monotonic() < deadline, "the cancel request never arrived"
            time.sleep(0.05)
        raise redbatch.JobCancelled()

    @jobs.function
    def report(done: redbatch.GroupDone, ctx: redbatch.JobContext) -> None:
        calls.record(done)

    return jobs


class Service:
    def __init__(self, base: str, store: Store, calls: Calls) -> None:
        self.store = store
        self.calls = calls
        self.client = httpx.Client(base_url=base, timeout=DEADLINE)

    def submit(self, body: dict[str, Any], queue: str = "work") -> httpx.Response:
        return self.client.post(f"/jobs/{queue}", json=body, headers=AUTH)

    def poll(self, path: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """GET ``path`` until ``done`` accepts its body: how an HTTP client waits for a job."""
        deadline = time.monotonic() + DEADLINE
        while True:
            response = self.client.get(path)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            if done(body):
                return body
            assert time.monotonic() < deadline, f"{path} is still {body}"
            time.sleep(0.02)  # a client's poll interval, bounded by the deadline

    def finished(self, location: str) -> dict[str, Any]:
        return self.poll(location, lambda job: job["finished_at"] is not None)


@pytest.fixture
def service() -> Iterator[Service]:
    store = redbatch.connect("memory://")
    calls = Calls()
    redbatch.Jobs(store, "remote").submit("elsewhere", {"from": "python"})  # a queue only the store knows
    worker = redbatch.Worker(store, [work_queue(store, calls)], concurrency=4, handle_signals=False)
    try:
        with live_server(create_app(store, worker=worker, token=TOKEN)) as base:
            svc = Service(base, store, calls)
            with svc.client:
                yield svc
    finally:
        store.close()


# ---------------------------------------------------------------- jobs


def test_submit_poll_and_the_result(service: Service) -> None:
    response = service.submit({"function": "echo", "params": {"case": "loan-42", "n": [1, None]}})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    location = response.headers["location"]
    assert location == f"/jobs/work/id/{job_id}"
    job = service.finished(location)
    assert job["status"] == "succeeded" and job["result"] == {"case": "loan-42", "n": [1, None]}
    assert job["progress"] == 1.0 and job["attempt"] == 1 and job["function"] == "echo"
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]


def test_a_chain_passes_each_result_on(service: Service) -> None:
    response = service.submit({"function": "add_one", "params": 1, "then": ["add_one", "add_one"]})
    job = service.finished(response.headers["location"])
    assert (job["status"], job["result"], job["steps"], job["step"]) == ("succeeded", 4, 3, 2)


def test_an_id_makes_submitting_idempotent_and_may_hold_any_character(service: Service) -> None:
    for job_id in ("case/7?x=1 #%", "counts", "groups"):  # a '/', and route names
        first = service.submit({"function": "echo", "params": "first", "id": job_id})
        assert first.status_code == 202 and first.json() == {"id": job_id}
        job = service.finished(first.headers["location"])
        again = service.submit({"function": "echo", "params": "second", "id": job_id})
        assert again.status_code == 202 and again.headers["location"] == first.headers["location"]
        assert service.client.get(first.headers["location"]).json() == job
        assert job["result"] == "first"


def test_attempts_lanes_delays_and_timeouts(service: Service) -> None:
    failing = service.submit(
        {"function": "fail", "params": {"error": "boom"}, "max_attempts": 1, "lane": "high"}
    )
    job = service.finished(failing.headers["location"])
    assert (job["status"], job["attempt"], job["max_attempts"], job["lane"]) == ("failed", 1, 1, "high")
    assert "boom" in job["error"]
    delayed = service.submit({"function": "echo", "delay": 3600, "timeout": 5, "lane": "low"})
    job = service.client.get(delayed.headers["location"]).json()
    assert (job["status"], job["lane"]) == ("pending", "low")
    cancelled = service.client.post(delayed.headers["location"] + "/cancel", headers=AUTH)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"


def test_a_running_job_sees_its_cancel(service: Service) -> None:
    location = service.submit({"function": "wait_for_cancel"}).headers["location"]
    service.poll(location, lambda job: job["status"] == "running")
    answer = service.client.post(location + "/cancel", headers=AUTH).json()
    assert answer["cancel_requested"] is True
    assert service.finished(location)["status"] == "cancelled"


def test_list_by_status_and_group_with_a_cursor_counts_and_cleanup(service: Service) -> None:
    locations = [service.submit({"function": "echo", "params": n}).headers["location"] for n in range(5)]
    failed = service.submit({"function": "fail", "params": {"error": "x"}, "max_attempts": 1})
    for location in [*locations, failed.headers["location"]]:
        service.finished(location)
    pages, cursor = [], None
    while True:
        params: dict[str, Any] = {"status": "succeeded", "limit": 2} | ({"cursor": cursor} if cursor else {})
        page = service.client.get("/jobs/work", params=params).json()
        pages.append(page["jobs"])
        if (cursor := page["cursor"]) is None:
            break
    listed = [job for page in pages for job in page]
    assert [len(page) for page in pages] == [2, 2, 1]
    assert sorted(job["result"] for job in listed) == list(range(5))
    created = [(job["created_at"], job["id"]) for job in listed]
    assert created == sorted(created, reverse=True)  # newest first
    assert [
        job["status"] for job in service.client.get("/jobs/work", params={"status": "failed"}).json()["jobs"]
    ] == ["failed"]
    counts = service.client.get("/jobs/work/counts").json()
    assert counts == {"pending": 0, "running": 0, "succeeded": 5, "failed": 1, "cancelled": 0}

    pending = service.submit({"function": "echo", "delay": 3600}).headers["location"]
    kept = service.client.post("/jobs/work/cleanup", json={"older_than": 3600}, headers=AUTH)
    assert kept.status_code == 200 and kept.json() == {"deleted": 0}
    gone = service.client.post("/jobs/work/cleanup", json={"older_than": 0}, headers=AUTH).json()
    assert gone == {"deleted": 6}
    assert_error(service.client.get(locations[0]), 404, "NotFound")
    assert service.client.get(pending).json()["status"] == "pending"  # never cleaned up
    assert service.client.get("/jobs/work/counts").json()["pending"] == 1


# ---------------------------------------------------------------- groups


def test_a_group_of_calls_and_chains_its_callback_and_a_filtered_retry(service: Service) -> None:
    members = [
        {"function": "echo", "params": 1},
        {"function": "add_one", "params": 1, "then": ["add_one"]},
        {"function": "fail", "params": {"error": "transient: timeout"}},
        {"function": "fail", "params": {"error": "permanent: bad document"}},
    ]
    response = service.client.post(
        "/jobs/work/groups", json={"members": members, "id": "batch/1", "callback": "report"}, headers=AUTH
    )
    assert response.status_code == 202, response.text
    assert response.json() == {"id": "batch/1", "members": [f"batch/1.{i}" for i in range(4)]}
    location = response.headers["location"]
    assert location == "/jobs/work/groups/batch%2F1"
    progress = service.poll(location, lambda p: p["finished_at"] is not None)
    assert (progress["total"], progress["succeeded"], progress["failed"], progress["percent"]) == (
        4,
        2,
        2,
        100.0,
    )
    service.calls.wait_for(1)
    assert sorted(service.calls.done[0].failed) == ["batch/1.2", "batch/1.3"]
    members_listed = service.client.get("/jobs/work", params={"group": "batch/1"}).json()["jobs"]
    assert sorted(job["id"] for job in members_listed) == [f"batch/1.{i}" for i in range(4)]
    chain = service.client.get("/jobs/work/id/batch%2F1.1").json()
    assert chain["result"] == 3

    retry = service.client.post(
        location + "/retry-failed",
        json={"error_matches": r"transient: time(out)?$", "lane": "high"},
        headers=AUTH,
    )
    assert retry.status_code == 200 and retry.json() == {"retried": 1}
    progress = service.poll(location, lambda p: p["round"] == 2 and p["finished_at"] is not None)
    assert (progress["succeeded"], progress["failed"], progress["pending"]) == (2, 2, 0)
    service.calls.wait_for(2)
    none = service.client.post(
        location + "/retry-failed", json={"error_contains": "nothing like it"}, headers=AUTH
    )
    assert none.json() == {"retried": 0}
    again = service.client.post("/jobs/work/groups", json={"members": [], "id": "batch/1"}, headers=AUTH)
    assert again.status_code == 202  # the group exists: nothing changes
    assert service.client.get(location).json()["total"] == 4


# ---------------------------------------------------------------- queues and functions


def test_a_queue_only_the_store_knows_takes_any_function(service: Service) -> None:
    response = service.submit({"function": "known_elsewhere", "params": [1]}, queue="remote")
    assert response.status_code == 202, response.text
    job = service.client.get(response.headers["location"]).json()
    assert (job["status"], job["function"]) == ("pending", "known_elsewhere")  # no worker here runs it
    assert service.client.get("/jobs/remote/counts").json()["pending"] == 2


def test_unknown_queues_jobs_and_groups_are_404(service: Service) -> None:
    for queue in ("nobody", "not a name!", "x" * 65):
        assert_error(service.client.get(f"/jobs/{queue}/counts"), 404, "NotFound")
        assert_error(service.submit({"function": "echo"}, queue=queue), 404, "NotFound")
    for path in (
        "/jobs/work/id/nope",
        "/jobs/work/id/",
        "/jobs/work/id/" + "x" * 201,
        "/jobs/work/groups/nope",
    ):
        assert_error(service.client.get(path), 404, "NotFound")
    assert_error(service.client.post("/jobs/work/id/nope/cancel", headers=AUTH), 404, "NotFound")
    assert_error(service.client.post("/jobs/work/groups/nope/retry-failed", headers=AUTH), 404, "NotFound")


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ({"function": "no_such_function"}, "ConfigError"),  # the in-process worker would never run it
        ({"function": "echo", "then": ["no_such_function"]}, "ConfigError"),
        ({"function": "echo", "params": float("nan")}, "InvalidItem"),
        ({"function": "echo", "params": 2**70}, "InvalidItem"),
        ({"function": "bad name!"}, "ValidationError"),
        ({"function": "echo", "lane": "urgent"}, "ValidationError"),
        ({"function": "echo", "delay": -1}, "ValidationError"),
        ({"function": "echo", "delay": float("inf")}, "ValidationError"),
        ({"function": "echo", "timeout": 0}, "ValidationError"),
        ({"function": "echo", "max_attempts": 0}, "ValidationError"),
        ({"function": "echo", "id": ""}, "ValidationError"),
        ({"function": "echo", "id": "x" * 201}, "ValidationError"),
        ({"function": "echo", "extra": 1}, "ValidationError"),
        ({"params": 1}, "ValidationError"),
    ],
)
def test_bad_submissions_are_422_and_store_nothing(service: Service, body: dict[str, Any], kind: str) -> None:
    content = json.dumps(body)  # the stdlib's encoder writes NaN and huge integers
    response = service.client.post(
        "/jobs/work", content=content, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert_error(response, 422, kind)
    assert service.client.get("/jobs/work/counts").json() == dict.fromkeys(
        ("pending", "running", "succeeded", "failed", "cancelled"), 0
    )


def test_bad_groups_lists_and_filters_are_422(service: Service) -> None:
    bad_member = {"members": [{"function": "echo"}, {"function": "missing"}]}
    assert_error(service.client.post("/jobs/work/groups", json=bad_member, headers=AUTH), 422, "ConfigError")
    bad_callback = {"members": [{"function": "echo"}], "callback": "missing"}
    assert_error(
        service.client.post("/jobs/work/groups", json=bad_callback, headers=AUTH), 422, "ConfigError"
    )
    assert service.client.get("/jobs/work/counts").json()["pending"] == 0
    assert_error(service.client.get("/jobs/work", params={"status": "lost"}), 422, "ValidationError")
    assert_error(service.client.get("/jobs/work", params={"cursor": "garbage"}), 422, "ConfigError")
    assert_error(service.client.post("/jobs/work/cleanup", json={"older_than": -1}, headers=AUTH), 422)
    group = service.client.post("/jobs/work/groups", json={"members": [], "id": "empty"}, headers=AUTH)
    assert group.status_code == 202
    bad_regex = {"error_matches": "(unclosed"}
    response = service.client.post("/jobs/work/groups/empty/retry-failed", json=bad_regex, headers=AUTH)
    assert_error(response, 422, "ConfigError")


def test_writes_need_the_token_and_reads_do_not(service: Service) -> None:
    writes = [
        ("/jobs/work", {"function": "echo"}),
        ("/jobs/work/cleanup", {"older_than": 0}),
        ("/jobs/work/groups", {"members": []}),
        ("/jobs/work/id/x/cancel", None),
        ("/jobs/work/groups/g/retry-failed", None),
    ]
    for path, body in writes:
        assert_error(service.client.post(path, json=body), 401, "Unauthorized")
    assert service.client.get("/jobs/work/counts").json()["pending"] == 0  # nothing was stored
    assert service.client.get("/jobs/work").status_code == 200


def test_the_jobs_routes_are_in_the_openapi_schema(service: Service) -> None:
    paths = service.client.get("/openapi.json").json()["paths"]
    for path in (
        "/jobs/{queue}",
        "/jobs/{queue}/counts",
        "/jobs/{queue}/cleanup",
        "/jobs/{queue}/id/{job_id}",
        "/jobs/{queue}/id/{job_id}/cancel",
        "/jobs/{queue}/groups",
        "/jobs/{queue}/groups/{group_id}",
        "/jobs/{queue}/groups/{group_id}/retry-failed",
    ):
        assert path in paths, sorted(paths)
    assert "Location" in paths["/jobs/{queue}"]["post"]["responses"]["202"]["headers"]


def test_metrics_show_the_jobs_by_status_and_need_no_token(service: Service) -> None:
    location = service.submit({"function": "echo", "params": 1}).headers["location"]
    service.finished(location)
    response = service.client.get("/metrics")
    assert response.status_code == 200
    lines = response.text.splitlines()
    assert 'redbatch_jobs{queue="work",status="succeeded"} 1.0' in lines
    assert any(line.startswith('redbatch_jobs{queue="work",status="pending"}') for line in lines)
