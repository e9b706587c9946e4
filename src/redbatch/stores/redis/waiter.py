"""The Redis store's waiter: a worker's sleep, ended by the scripts' PUBLISH."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

import redis

from redbatch.stores.base import new_batch_id

log = logging.getLogger("redbatch.store.redis")


class RedisWaiter:
    """Woken by the PUBLISH a script sends when a key becomes due sooner than any other.

    ``close`` may come from another thread while ``wait`` reads the connection; it then
    publishes on the waiter's own channel, and the waiting thread closes the connection.
    """

    def __init__(self, client: Any, channels: list[str]) -> None:
        self._client = client
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._own = f"{channels[0]}:waiter:{new_batch_id()}"
        self._channels = [*channels, self._own]
        self._subscribed = False
        self._lock = threading.Lock()
        self._waiting = False
        self._closed = False

    def wait(self, timeout: float) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._waiting = True
        try:
            return self._wait(time.monotonic() + timeout)
        finally:
            with self._lock:
                self._waiting = False
                if self._closed:
                    self._pubsub.close()

    def _wait(self, deadline: float) -> bool:
        try:
            if not self._subscribed:
                self._pubsub.subscribe(*self._channels)
                self._subscribed = True
            woke = False
            while (remaining := deadline - time.monotonic()) > 0 or woke:
                message = self._pubsub.get_message(timeout=0 if woke else remaining)
                if message is None:
                    return woke
                if message.get("channel") == self._own.encode():
                    return woke
                if message.get("type") == "message":
                    woke = True
            return woke
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            log.warning("wake-up channel lost (%s); relying on deadlines until it is back", exc)
            self._subscribed = False
            with contextlib.suppress(Exception):  # the connection is already broken
                self._pubsub.reset()
            time.sleep(max(0.0, min(0.5, deadline - time.monotonic())))
            return False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if not self._waiting:
                self._pubsub.close()
                return
        # If this fails the waiting thread still returns, by its own timeout.
        with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
            self._client.publish(self._own, b"close")
