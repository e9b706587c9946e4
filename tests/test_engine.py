"""The state machine of ``redbatch.engine`` is cited, transition by transition, by each store.

A store marks the code implementing a transition with a ``# transition: NAME`` comment
(``-- transition: NAME`` in a Lua script's header), so that a grep finds every transition
in every store. This test keeps those marks complete
and current: each name of ``TRANSITIONS`` cited at least once, and no name it lacks.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import redbatch.stores
from redbatch.engine import TRANSITIONS, KeyState, due_at, wakes
from redbatch.types import QueueSpec

STORES = Path(redbatch.stores.__file__).parent
CITATION = re.compile(r"(?:#|--) transition: (\w+)")


SOURCES = {
    "memory": [STORES / "memory.py"],
    "sqlite": sorted((STORES / "sqlite").glob("*.py")),
    "redis": sorted((STORES / "redis").glob("*.py")) + sorted((STORES / "redis" / "lua").glob("*.lua")),
}


@pytest.mark.parametrize("store", sorted(SOURCES))
def test_every_transition_is_cited_where_a_store_implements_it(store: str) -> None:
    cited = {name for path in SOURCES[store] for name in CITATION.findall(path.read_text())}
    assert set(TRANSITIONS) - cited == set(), "transitions no comment cites"
    assert cited - set(TRANSITIONS) == set(), "citations of transitions the engine does not have"


@pytest.mark.parametrize(
    ("deadline", "head", "woken"),
    [
        (100, None, True),  # the index was empty: nobody waits for anything
        (50, 100, True),  # earlier than the head the workers sleep until
        (100, 100, False),  # no earlier than the head: the workers wake then anyway
        (10, 5, True),  # due now (now is 10), whatever the head
        (20, 5, False),
    ],
)
def test_the_wake_up_rule(deadline: int, head: int | None, woken: bool) -> None:
    assert wakes(deadline, head, 10) is woken


def test_the_table_names_each_transition_once_with_its_states() -> None:
    for name, transition in TRANSITIONS.items():
        assert transition.name == name
        assert transition.before and transition.after
        assert transition.before <= set(KeyState) and transition.after <= set(KeyState)
    for name in ("ack", "fail_dead", "bury_lapsed"):  # a batch ending: the key is idle or gone
        assert TRANSITIONS[name].after == {KeyState.IDLE, KeyState.ABSENT}
        assert TRANSITIONS[name].may_wake


SPEC = QueueSpec(
    "b", max_items=3, max_wait_ms=1000, idle_ms=300, dedupe=False, max_attempts=5, lease_ms=10_000
)


def test_due_at_is_the_earliest_of_full_max_wait_and_idle() -> None:
    assert due_at(SPEC, first_ms=0, last_ms=0, pending=3, now_ms=50) == 50  # full: now
    assert due_at(SPEC, first_ms=0, last_ms=900, pending=2, now_ms=900) == 1000  # max_wait first
    assert due_at(SPEC, first_ms=0, last_ms=100, pending=2, now_ms=100) == 400  # quiet first
