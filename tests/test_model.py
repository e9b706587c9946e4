"""Property-based test: every store against a plain model of the batching rules.

A hypothesis state machine adds items, moves the clock, claims, acknowledges, fails, clears
and flushes in random orders, and checks each claim, the counters and ``peek`` against a
model that states the rules as simply as possible. Every step is checked against the state
machine of ``redbatch.engine``: the key's state before and after must be the ones its
transition names, and the event counters must move as the transition says.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import redbatch
from redbatch.engine import TRANSITIONS, Counter, KeyState
from redbatch.types import ClaimedBatch
from redbatch.worker import decode_batch
from tests.conftest import FakeClock, store_url

MAX_ITEMS, MAX_WAIT, IDLE = 3, 1000, 300
KEYS = st.sampled_from(["a", "b", "c"])


@dataclass
class ModelKey:
    pending: list[tuple[int, int]] = field(default_factory=list)  # (item, arrived_ms)
    last_ms: int = 0
    batch_id: str | None = None
    batch_items: list[int] = field(default_factory=list)
    attempt: int = 0
    running: bool = False
    retry_at: int = 0
    stays_due: bool = False  # was due when more items arrived: more items never delay a key

    @property
    def state(self) -> KeyState:
        if self.batch_id is not None:
            return KeyState.RUNNING if self.running else KeyState.WAITING
        return KeyState.IDLE if self.pending else KeyState.ABSENT

    def due(self, now: int) -> bool:
        if self.batch_id is not None:
            return not self.running and self.retry_at <= now
        if not self.pending:
            return False
        if self.stays_due:
            return True
        first = self.pending[0][1]
        return len(self.pending) >= MAX_ITEMS or first + MAX_WAIT <= now or self.last_ms + IDLE <= now


class BatchingModel(RuleBasedStateMachine):
    url: str = "memory://"
    options: dict[str, str] = {}  # noqa: RUF012 - replaced per run

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        options = {k: v for k, v in self.options.items()}
        if "prefix" in options:
            options["prefix"] = f"m{uuid.uuid4().hex[:10]}"
        self.store = redbatch.connect(self.url, **options)
        self.batcher = redbatch.Batcher(
            self.store, "model", max_items=MAX_ITEMS, max_wait=MAX_WAIT / 1000, idle=IDLE / 1000,
            lease=3600, max_attempts=1000, clock=self.clock,
        )  # fmt: skip
        self.keys: dict[str, ModelKey] = {}
        self.running: dict[str, ClaimedBatch] = {}
        self.next_item = 0
        self.events = dict.fromkeys(Counter, 0)  # what the transitions taken so far moved

    def step(self, name: str, model: ModelKey, before: KeyState, **amounts: int) -> None:
        """Check a step against the engine's transition table and count what it moves."""
        transition = TRANSITIONS[name]
        assert before in transition.before, (name, before)
        assert model.state in transition.after, (name, model.state)
        for counter, delta in transition.moved(**amounts).items():
            self.events[counter] += delta

    def teardown(self) -> None:
        self.store.close()

    def key(self, name: str) -> ModelKey:
        return self.keys.setdefault(name, ModelKey())

    @rule(key=KEYS, count=st.integers(1, 4))
    def add(self, key: str, count: int) -> None:
        new = list(range(self.next_item, self.next_item + count))
        self.next_item += count
        if count == 1:
            self.batcher.add(key, new[0])
        else:
            self.batcher.add_many([(key, item) for item in new])
        model = self.key(key)
        before = model.state
        if model.batch_id is None and model.due(self.clock.now):
            model.stays_due = True
        model.pending += [(item, self.clock.now) for item in new]
        model.last_ms = self.clock.now
        self.step("append", model, before, items=count)

    @rule(ms=st.sampled_from([1, 100, 299, 300, 700, 1000, 2500]))
    def advance(self, ms: int) -> None:
        self.clock.now += ms

    @rule(limit=st.integers(1, 4))
    def claim(self, limit: int) -> None:
        due = {name for name, m in self.keys.items() if m.due(self.clock.now)}
        claimed = self.store.claim_due(self.batcher.spec, self.clock.now, limit)
        assert len(claimed) == min(limit, len(due))
        for batch in claimed:
            name = batch.lease.key
            assert name in due
            model = self.keys[name]
            before = model.state
            items = decode_batch(batch).items
            if model.batch_id is not None:  # a retry: same id, same items
                assert (batch.lease.batch_id, items) == (model.batch_id, model.batch_items)
            else:
                taken = model.pending[:MAX_ITEMS]
                del model.pending[:MAX_ITEMS]
                model.stays_due = False
                assert items == [item for item, _ in taken]
                model.batch_id, model.batch_items, model.attempt = batch.lease.batch_id, items, 0
            model.attempt += 1
            model.running = True
            self.step("claim" if before is KeyState.IDLE else "claim_retry", model, before, items=len(items))
            assert batch.attempt == model.attempt
            self.running[name] = batch

    @precondition(lambda self: self.running)
    @rule(data=st.data(), outcome=st.sampled_from(["ack", "retry", "dead"]))
    def settle(self, data: st.DataObject, outcome: str) -> None:
        name = data.draw(st.sampled_from(sorted(self.running)))
        batch = self.running.pop(name)
        model = self.keys[name]
        now = self.clock.now
        if outcome == "ack":
            assert self.store.ack(self.batcher.spec, [batch.lease], now) == [True]
        else:
            retry_at = now + 500 if outcome == "retry" else None
            assert self.store.fail(self.batcher.spec, batch.lease, now, "boom", retry_at)
        size = len(model.batch_items)
        if outcome == "retry":
            model.running, model.retry_at = False, now + 500
        else:
            model.batch_id, model.batch_items, model.running = None, [], False
        transition = {"ack": "ack", "retry": "fail_retry", "dead": "fail_dead"}[outcome]
        self.step(transition, model, KeyState.RUNNING, done=size if outcome == "ack" else 0)
        assert self.store.ack(self.batcher.spec, [batch.lease], now) == [False]  # settled once only

    @rule(key=KEYS)
    def clear(self, key: str) -> None:
        model = self.key(key)
        before, dropped = model.state, len(model.pending)
        expected = dropped + (len(model.batch_items) if before is KeyState.WAITING else 0)
        assert self.batcher.clear(key) == expected
        model.pending, model.stays_due = [], False
        if before is KeyState.WAITING:
            model.batch_id, model.batch_items = None, []
        self.step("clear", model, before, items=dropped)

    @rule(key=KEYS)
    def flush(self, key: str) -> None:
        model = self.key(key)
        before = model.state
        assert self.batcher.flush(key) == (1 if before is KeyState.IDLE else 0)
        if before is KeyState.IDLE:
            model.stays_due = True
        self.step("flush", model, before)

    @invariant()
    def counters_match(self) -> None:
        stats = self.batcher.stats()
        models = self.keys.values()
        assert stats.buffered_items == sum(len(m.pending) for m in models)
        assert stats.in_flight == sum(m.running for m in models)
        assert stats.retrying == sum(m.batch_id is not None and not m.running for m in models)
        assert stats.open_keys == sum(bool(m.pending) or m.batch_id is not None for m in models)
        assert stats.buffered_items == self.events[Counter.BUFFERED_ITEMS]
        assert stats.dead == self.events[Counter.DEAD]
        assert stats.flushed_batches == self.events[Counter.FLUSHED_BATCHES]
        assert stats.flushed_items == self.events[Counter.FLUSHED_ITEMS]

    @invariant()
    def peek_matches(self) -> None:
        for name, model in self.keys.items():
            assert [p.value for p in self.batcher.peek(name)] == [item for item, _ in model.pending]


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
def test_stores_follow_the_batching_model(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = store_url(kind, request, tmp_path)
    options: dict[str, Any] = {"prefix": "replaced"} if kind == "redis" else {}

    class Machine(BatchingModel):
        pass

    Machine.url, Machine.options = url, options
    if kind == "sqlite":  # a fresh file per example
        counter = iter(range(10**6))
        Machine.__init__ = _fresh_sqlite(Machine.__init__, tmp_path, counter)  # type: ignore[method-assign]
    examples = 150 if kind == "memory" else 40
    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=examples, stateful_step_count=40, deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )  # fmt: skip


def _fresh_sqlite(init: Any, tmp_path: Path, counter: Any) -> Any:
    def fresh(self: BatchingModel) -> None:
        type(self).url = f"sqlite:///{tmp_path / f'model-{next(counter)}.db'}"
        init(self)

    return fresh
