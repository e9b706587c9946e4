"""The state machine of ``redbatch.engine`` is cited, transition by transition, by each store.

A store marks the code implementing a transition with a ``# transition: NAME`` comment, so
that a grep finds every transition in every store. This test keeps those marks complete
and current: each name of ``TRANSITIONS`` cited at least once, and no name it lacks.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import redbatch.stores
from redbatch.engine import TRANSITIONS, wakes

STORES = Path(redbatch.stores.__file__).parent
CITATION = re.compile(r"# transition: (\w+)")


SOURCES = {
    "memory": [STORES / "memory.py"],
    "sqlite": sorted((STORES / "sqlite").glob("*.py")),
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
