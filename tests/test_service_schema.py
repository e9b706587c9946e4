"""Schemathesis against the live service's OpenAPI: generated requests to every route (batchers,
jobs and groups), with the token, find no 5xx and no response that breaks the schema. Bounded
to run in seconds.

The schema is read from the app object when this module is collected (schemathesis makes
its test cases then, before any fixture runs; its lazy ``from_fixture`` loader does not work
with pytest 9), and the first test checks that the live server serves that very document.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

import redbatch
from redbatch.service import create_app
from tests.live_service import live_server

TOKEN = "schema-token"
MAX_EXAMPLES = 25
"""Generated cases per route: a few hundred requests in all, some seconds on one core."""

STORE = redbatch.connect("memory://")
# A batcher with a handler and a worker, so generated adds, flushes and replays run for real.
SERVED = redbatch.Batcher(STORE, "served", max_wait=0.05, max_attempts=1, lease=5)
SERVED.handler(lambda batch: None)
# A job queue with functions, so generated submits, groups, cancels and retries run for real.
JOBS = redbatch.Jobs(STORE, "work", max_attempts=1, lease=5)
JOBS.function("echo")(lambda params, ctx: params)
JOBS.function("fail")(lambda params, ctx: 1 / 0)
APP = create_app(
    STORE,
    worker=redbatch.Worker(STORE, [SERVED, JOBS], concurrency=2, handle_signals=False),
    token=TOKEN,
    max_body=64 * 1024,
)
schema = schemathesis.openapi.from_dict(APP.openapi())


@pytest.fixture(scope="module")
def live_base() -> Iterator[str]:
    with live_server(APP) as base:
        yield base


def test_the_live_server_serves_the_schema_under_test(live_base: str) -> None:
    assert httpx.get(f"{live_base}/openapi.json").json() == APP.openapi()


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_responses_match_the_schema(case: schemathesis.Case, live_base: str) -> None:
    case.call_and_validate(base_url=live_base, headers={"Authorization": f"Bearer {TOKEN}"})
