"""The HTTP service through a real uvicorn server on a loopback port, on memory and SQLite
(Redis in a smoke test): items added over HTTP reach an in-process worker, and every bad
request gets its 4xx with the JSON error body, storing nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import redbatch
from redbatch.service import create_app
from redbatch.stores.base import Store
from tests.conftest import store_url
from tests.live_service import live_server, wait_healthy
from tests.servers import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DEADLINE = 15.0


class Deliveries:
    """What the worker's handler received, with a wait on a condition instead of a sleep."""

    def __init__(self) -> None:
        self.batches: list[redbatch.Batch] = []
        self._changed = threading.Condition()

    def record(self, batch: redbatch.Batch) -> None:
        with self._changed:
            self.batches.append(batch)
            self._changed.notify_all()

    def items(self) -> list[Any]:
        with self._changed:
            return [item for batch in self.batches for item in batch.items]

    def wait_for(self, done: Callable[[], bool], timeout: float = DEADLINE) -> None:
        with self._changed:
            assert self._changed.wait_for(done, timeout), f"not delivered in {timeout} s: {self.batches}"


class Service:
    def __init__(self, base: str, store: Store, deliveries: Deliveries) -> None:
        self.base = base
        self.store = store
        self.deliveries = deliveries
        self.client = httpx.Client(base_url=base, timeout=DEADLINE)


def build_app(store: Store, deliveries: Deliveries, token: str | None = TOKEN, max_body: int = 64 * 1024):
    events = redbatch.Batcher(store, "events", max_items=3, max_wait=0.2, max_attempts=1, lease=5)

    @events.handler
    def deliver(batch: redbatch.Batch) -> None:
        if any(isinstance(item, dict) and item.get("poison") for item in batch.items):
            raise RuntimeError("poison item")
        deliveries.record(batch)

    parked = redbatch.Batcher(store, "parked", max_wait=3600)  # served, never handled: items wait
    worker = redbatch.Worker(store, [events], concurrency=4, handle_signals=False)
    return create_app(store, [parked], worker=worker, token=token, max_body=max_body)


@pytest.fixture(params=["memory", "sqlite"])
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Service]:
    store = redbatch.connect(store_url(request.param, request, tmp_path))
    deliveries = Deliveries()
    try:
        with live_server(build_app(store, deliveries)) as base:
            svc = Service(base, store, deliveries)
            with svc.client:
                yield svc
    finally:
        store.close()


def assert_error(response: httpx.Response, status: int, kind: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    if kind is not None:
        assert error["type"] == kind, error
    return dict(error)


# ---------------------------------------------------------------- the happy path


def test_items_added_over_http_reach_the_in_process_worker(service: Service) -> None:
    client = service.client
    response = client.post("/batchers/events/items", json={"key": "agent-1", "item": {"n": 1}}, headers=AUTH)
    assert response.status_code == 202 and response.json() == {"added": 1}
    pairs = [{"key": "agent-2", "item": n} for n in range(3)] + [{"key": "agent-1", "item": [True, None]}]
    response = client.post("/batchers/events/items/many", json={"items": pairs}, headers=AUTH)
    assert response.status_code == 202 and response.json() == {"added": 4}

    service.deliveries.wait_for(lambda: len(service.deliveries.items()) == 5)
    by_key = {(b.key, tuple(json.dumps(i) for i in b.items)) for b in service.deliveries.batches}
    assert ("agent-2", ("0", "1", "2")) in by_key
    assert ("agent-1", ('{"n": 1}', "[true, null]")) in by_key
    stats = client.get("/batchers/events/stats").json()
    assert stats["name"] == "events" and stats["buffered_items"] == 0
    assert client.get("/readyz").json()["worker"] == "running"


def test_a_batcher_known_only_from_the_stores_rules_takes_items(service: Service) -> None:
    # A producer elsewhere recorded the rules of "remote"; the service was never told of it.
    redbatch.Batcher(service.store, "remote", max_wait=3600).add("k", "from python")
    response = service.client.post(
        "/batchers/remote/items", json={"key": "k", "item": "from curl"}, headers=AUTH
    )
    assert response.status_code == 202
    pending = service.client.get("/batchers/remote/pending", params={"key": "k"}).json()
    assert [p["item"] for p in pending["items"]] == ["from python", "from curl"]
    assert all(p["arrived_at"] > 0 for p in pending["items"])
    assert service.client.get("/batchers/remote/stats").json()["buffered_items"] == 2


def test_peek_flush_and_clear(service: Service) -> None:
    client = service.client
    pairs = [{"key": "a/b?c", "item": i} for i in range(3)]
    client.post("/batchers/parked/items/many", json={"items": pairs}, headers=AUTH).raise_for_status()
    client.post("/batchers/parked/items", json={"key": "other", "item": 0}, headers=AUTH).raise_for_status()
    peek = client.get("/batchers/parked/pending", params={"key": "a/b?c", "limit": 2}).json()
    assert peek["key"] == "a/b?c" and [p["item"] for p in peek["items"]] == [0, 1]
    assert client.post("/batchers/parked/flush", json={"key": "other"}, headers=AUTH).json() == {"keys": 1}
    assert client.post("/batchers/parked/flush", headers=AUTH).json() == {"keys": 2}
    assert client.post("/batchers/parked/clear", json={"key": "a/b?c"}, headers=AUTH).json() == {"cleared": 3}
    assert client.get("/batchers/parked/pending", params={"key": "a/b?c"}).json()["items"] == []
    assert client.post("/batchers/parked/clear", json={"key": "never"}, headers=AUTH).json() == {"cleared": 0}


def test_dead_letters_list_paged_replay_and_purge(service: Service) -> None:
    client = service.client
    for key in ("p1", "p2", "p3"):
        client.post("/batchers/events/items", json={"key": key, "item": {"poison": True}}, headers=AUTH)
    deadline = time.monotonic() + DEADLINE
    while client.get("/batchers/events/stats").json()["dead"] < 3:
        assert time.monotonic() < deadline, "the poison batches were not dead-lettered"
        time.sleep(0.05)  # polling the store's counter, bounded by the deadline
    first = client.get("/batchers/events/dead-letters", params={"limit": 2}).json()
    assert len(first["dead_letters"]) == 2 and first["next_offset"] == 2
    rest = client.get("/batchers/events/dead-letters", params={"limit": 2, "offset": 2}).json()
    assert len(rest["dead_letters"]) == 1 and rest["next_offset"] is None
    letter = first["dead_letters"][0]
    assert letter["items"] == [{"poison": True}] and "poison item" in letter["error"]
    assert letter["attempts"] == 1

    assert_error(client.post("/batchers/events/dead-letters/replay", json={"ids": ["nope"]}, headers=AUTH),
                 404, "NotFound")  # fmt: skip
    assert_error(
        client.post("/batchers/events/dead-letters/replay", json={}, headers=AUTH), 422, "ConfigError"
    )
    ids = [letter["id"]]
    replayed = client.post("/batchers/events/dead-letters/replay", json={"ids": ids}, headers=AUTH)
    assert replayed.json() == {"replayed": 1}
    purged = client.post("/batchers/events/dead-letters/purge", json={"all": True}, headers=AUTH)
    assert purged.status_code == 200 and purged.json()["purged"] >= 2
    assert_error(
        client.post("/batchers/events/dead-letters/purge", json={"ids": ["gone"]}, headers=AUTH), 404
    )
    assert_error(client.post("/batchers/events/dead-letters/purge", json={"all": True, "older_than": 1},
                             headers=AUTH), 422)  # fmt: skip


def test_health_and_openapi(service: Service) -> None:
    assert service.client.get("/healthz").json()["status"] == "ok"
    ready = service.client.get("/readyz").json()
    assert ready["status"] == "ok" and ready["store"] == service.store.url
    schema = service.client.get("/openapi.json").json()
    assert "/batchers/{name}/items" in schema["paths"]
    assert service.client.get("/docs").status_code == 200


# ---------------------------------------------------------------- the error paths


def test_writes_need_the_token_and_reads_do_not(service: Service) -> None:
    client = service.client
    body = {"key": "k", "item": 1}
    missing = assert_error(client.post("/batchers/events/items", json=body), 401, "Unauthorized")
    assert TOKEN not in missing["message"]
    wrong = client.post("/batchers/events/items", json=body, headers={"Authorization": "Bearer nope"})
    assert_error(wrong, 401, "Unauthorized")
    assert wrong.headers["www-authenticate"] == "Bearer"
    basic = client.post("/batchers/events/items", json=body, headers={"Authorization": f"Basic {TOKEN}"})
    assert_error(basic, 401)
    for path in ("/batchers/parked/flush", "/batchers/parked/clear", "/batchers/parked/dead-letters/purge"):
        assert_error(client.post(path, json={"key": "k"}), 401)
    assert client.get("/batchers/events/stats").status_code == 200
    assert client.get("/batchers/events/dead-letters").status_code == 200
    assert client.get("/batchers/parked/stats").json()["buffered_items"] == 0  # nothing was stored


def test_unknown_batchers_are_404(service: Service) -> None:
    for name in ("nobody", "not a name!", "x" * 65):
        assert_error(service.client.get(f"/batchers/{name}/stats"), 404, "NotFound")
        response = service.client.post(f"/batchers/{name}/items", json={"key": "k", "item": 1}, headers=AUTH)
        assert_error(response, 404, "NotFound")
    assert_error(service.client.get("/no/such/route"), 404)
    assert_error(service.client.delete("/batchers/events/stats"), 405)


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        (b'{"key": "k", "item": ', "ValidationError"),  # not JSON
        (b'{"key": "k", "item": NaN}', "InvalidItem"),  # Python's JSON reads NaN: refused
        (b'{"key": "k", "item": [1, Infinity]}', "InvalidItem"),
        (b'{"key": "k", "item": 123456789012345678901234567890}', "InvalidItem"),  # over 64 bits
        (b'{"key": "", "item": 1}', "ValidationError"),
        (json.dumps({"key": "k" * 513, "item": 1}).encode(), "ValidationError"),
        (b'{"key": "\\ud800", "item": 1}', "ValidationError"),  # a lone surrogate
        (b'{"key": "k", "item": ["\\udfff"]}', "InvalidItem"),
        (b'{"key": 7, "item": 1}', "ValidationError"),
        (b'{"item": 1}', "ValidationError"),
        (b'{"key": "k", "item": 1, "extra": 2}', "ValidationError"),
        (b"[]", "ValidationError"),
    ],
)
def test_bad_items_and_keys_are_422_and_store_nothing(service: Service, content: bytes, kind: str) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    error = assert_error(
        service.client.post("/batchers/parked/items", content=content, headers=headers), 422, kind
    )
    if kind == "ValidationError":
        assert error["details"] and all("loc" in d and "msg" in d for d in error["details"])
    assert service.client.get("/batchers/parked/stats").json()["buffered_items"] == 0


def test_a_bad_pair_in_add_many_stores_nothing(service: Service) -> None:
    good = [{"key": f"k{n}", "item": n} for n in range(50)]
    content = json.dumps({"items": good})[:-2] + ', {"key": "k", "item": NaN}]}'
    headers = {**AUTH, "Content-Type": "application/json"}
    response = service.client.post("/batchers/parked/items/many", content=content, headers=headers)
    assert_error(response, 422, "InvalidItem")
    too_long = [*good, {"key": "x" * 600, "item": 1}]
    assert_error(
        service.client.post("/batchers/parked/items/many", json={"items": too_long}, headers=AUTH), 422
    )
    stats = service.client.get("/batchers/parked/stats").json()
    assert stats["buffered_items"] == 0 and stats["open_keys"] == 0


def test_bodies_over_the_limit_are_413(service: Service) -> None:
    big = json.dumps({"key": "k", "item": "x" * (64 * 1024)}).encode()
    response = service.client.post("/batchers/parked/items", content=big, headers=AUTH)
    assert_error(response, 413, "BodyTooLarge")

    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        yield b'{"key": "k", "item": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}'

    chunked = service.client.post("/batchers/parked/items", content=chunks(), headers=AUTH)
    assert "content-length" not in chunked.request.headers
    assert_error(chunked, 413, "BodyTooLarge")
    assert service.client.get("/batchers/parked/stats").json()["buffered_items"] == 0
    small = service.client.post("/batchers/parked/items", json={"key": "k", "item": "fits"}, headers=AUTH)
    assert small.status_code == 202


def test_without_a_token_writes_are_open(tmp_path: Path) -> None:
    store = redbatch.connect("memory://")
    with live_server(create_app(store, [redbatch.Batcher(store, "open")])) as base:
        response = httpx.post(f"{base}/batchers/open/items", json={"key": "k", "item": 1})
        assert response.status_code == 202


# ---------------------------------------------------------------- Redis


def test_redis_smoke_and_readyz_when_redis_goes(tmp_path: Path) -> None:
    server = RedisServer(free_port(), tmp_path).start()
    try:
        store = redbatch.connect(server.url, prefix="svc", connect_timeout=0.5, socket_timeout=0.5)
        deliveries = Deliveries()
        with (
            live_server(build_app(store, deliveries)) as base,
            httpx.Client(base_url=base, timeout=DEADLINE) as client,
        ):
            pairs = [{"key": "r", "item": n} for n in range(3)]
            assert (
                client.post("/batchers/events/items/many", json={"items": pairs}, headers=AUTH).status_code
                == 202
            )
            deliveries.wait_for(lambda: deliveries.items() == [0, 1, 2])
            assert client.get("/readyz").status_code == 200
            server.stop()
            started = time.monotonic()
            assert_error(client.get("/readyz"), 503, "NotReady")
            assert_error(client.get("/batchers/events/stats"), 503, "StoreUnavailable")
            assert time.monotonic() - started < 5  # within the store's bounded timeouts
        store.close()
    finally:
        server.stop()


# ---------------------------------------------------------------- redbatch serve


def test_redbatch_serve_runs_a_worker_and_finishes_in_flight_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "handled.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SERVICE_APP_OUT": str(out), "REDBATCH_API_TOKEN": TOKEN}
    url = f"sqlite:///{tmp_path / 'redbatch.db'}"
    args = [sys.executable, "-m", "redbatch", "serve", "--worker", str(ROOT / "tests" / "service_app.py")]
    process = subprocess.Popen(
        [*args, "--url", url, "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base)
        response = httpx.post(f"{base}/batchers/slow/items", json={"key": "k", "item": "work"}, headers=AUTH)
        assert response.status_code == 202
        deadline = time.monotonic() + DEADLINE
        while not out.exists() or "started" not in out.read_text():
            assert time.monotonic() < deadline and process.poll() is None, process.stderr
            time.sleep(0.02)  # polling a file the handler writes, bounded by the deadline
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=DEADLINE)
        assert process.returncode == 0, stderr.decode()
        assert out.read_text().splitlines() == ["started work", "finished work"]
        stats = redbatch.Batcher.open(redbatch.connect(url), "slow").stats()
        assert stats.flushed_items == 1 and stats.in_flight == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
