"""Baseline "list + lock": a list per conversation and a processing lock.

A producer (typically a webhook handler) does::

    RPUSH msg_queue:{chat} message
    SET processing_lock:{chat} 1 NX EX 600      -> if acquired, start processing (in background)

and processing is::

    loop: LRANGE msg_queue:{chat} 0 -1 ; empty -> stop ; handle ; DEL msg_queue:{chat}
    DEL processing_lock:{chat}

Messages pushed between an LRANGE and the following DEL are deleted unhandled; messages
pushed after the last (empty) LRANGE but before the lock is deleted stay in the list,
stranded until the chat's next message.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import redis

LOCK_TTL = 600
MAX_ROUNDS = 10_000

Handler = Callable[[str, list[Any]], None]
Dispatch = Callable[[Callable[[], None]], None]


def queue_key(chat: str) -> str:
    return f"msg_queue:{chat}"


def lock_key(chat: str) -> str:
    return f"processing_lock:{chat}"


def _noop(chat: str, items: list[Any]) -> None:
    return None


def _keep_lock(job: Callable[[], None]) -> None:
    """A dispatcher that never processes: the lock stays held (the add figure measures
    producing alone)."""
    return None


class ListLockBatcher:
    """One process' view of the pattern, on its own connection."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        handler: Handler = _noop,
        dispatch: Dispatch = _keep_lock,
    ) -> None:
        self.r = client
        self.handler = handler
        self.dispatch = dispatch

    def add(self, chat: str, item: Any) -> None:
        """Two round trips; the one that takes the lock starts processing."""
        self.r.rpush(queue_key(chat), json.dumps(item))
        if self.r.set(lock_key(chat), "1", nx=True, ex=LOCK_TTL):
            self.dispatch(lambda: self.process(chat))

    def process(self, chat: str) -> int:
        """Drain the chat's list round by round, then release the lock."""
        handled = 0
        try:
            for _ in range(MAX_ROUNDS):
                raw = self.r.lrange(queue_key(chat), 0, -1)
                if not raw:
                    break
                self.handler(chat, [json.loads(x) for x in raw])
                handled += len(raw)
                self.r.delete(queue_key(chat))
        finally:
            self.r.delete(lock_key(chat))
        return handled

    def buffered(self) -> int:
        return sum(int(self.r.llen(n)) for n in self.r.scan_iter(match="msg_queue:*", count=1000))
