"""The batching front door: a batcher's settings, the rules the store holds, its operators.

Adding items is ``redbatch.producing`` (mixed in); checking and encoding them is
``redbatch.checks``; sharing store calls between concurrent adds is ``redbatch.coalesce``.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeAlias

from redbatch.checks import (
    DEFAULT_MAX_ITEM_BYTES,
    check_key,
    check_name,
    dead_letter_ids,
    decode_item,
    is_async_callable,
    positive_int,
    seconds_to_ms,
)
from redbatch.errors import ConfigError, NotFound
from redbatch.producing import Producer
from redbatch.stores.base import Store
from redbatch.types import (
    Batch,
    BatcherStats,
    Clock,
    DeadLetter,
    PendingItem,
    QueueSpec,
    WaitingKey,
    system_clock,
)

Handler: TypeAlias = Callable[[Batch], None] | Callable[[Batch], Awaitable[None]]

log = logging.getLogger("redbatch.batcher")


class Batcher(Producer):
    """A named accumulator: items added under a key are handed to the handler as one batch.

    A key is handed over when it holds ``max_items`` items, when its oldest item has
    waited ``max_wait`` seconds, or (with ``idle``) when nothing was added for ``idle``
    seconds. A failing batch is retried with exponential backoff and jitter, then
    dead-lettered after ``max_attempts``. A worker owns a batch for ``lease`` seconds and
    keeps it by heartbeat while its handler runs.

    Those six settings are the batcher's *rules*, and the store holds one set per name:
    a worker publishes its own when it starts, and a producer whose settings differ adopts
    the store's at its next ``add`` (with a warning). ``configured`` is what this process
    asked for, ``spec`` the rules in effect. The other settings (``backoff``,
    ``max_backoff``, ``timeout``, ``dead_letter_ttl``, ``max_item_bytes``) are each
    process's own. Constructing a Batcher does no I/O.

    Durations are seconds (an int or a float), kept to the millisecond, at most 100 years.

    Args:
        store: The store that holds the batcher's items, from ``connect``. A worker serving
            this batcher must be given the same store object.
        name: The batcher's name in the store: 1 to 64 letters, digits, ``_``, ``.`` or
            ``-``, starting with a letter or digit. Every process using the name shares its
            items and its rules.
        max_items: A rule. A key holding this many items is handed over at once, and a
            batch holds at most this many. An integer, at least 1; default 100.
        max_wait: A rule. The longest an item waits, in seconds, counted from its own
            arrival: a key is handed over when its oldest item has waited this long.
            0 hands every item over at once. Default 60.
        idle: A rule. Debounce, in seconds: a key is also handed over once nothing was added
            to it for this long. None (the default) or 0 turns it off.
        dedupe: A rule. Collapse equal items (equal JSON, key order ignored) while they wait
            under a key: an item equal to one already waiting there is not stored again.
            Replayed dead letters are included (the one in front stays). Default off.
        max_attempts: A rule. How many attempts a batch gets (handler errors, timeouts and
            lost workers all count) before it goes to dead letters. 1 means no retry.
            An integer, at least 1; default 5.
        backoff: Seconds before the first retry. The delay after attempt ``n`` fails is
            ``min(max_backoff, backoff * 2 ** (n - 1))``, half of it fixed and half random
            (see ``retry_at``). At least 0; default 1.
        max_backoff: The longest delay before a retry, in seconds. At least 0; default 300.
        lease: A rule. How long a worker owns a batch without a heartbeat, in seconds; the
            time to recover a crashed worker's batch. Workers heartbeat every ``lease / 3``.
            At least 0.1; default 30.
        timeout: Seconds a handler may run before its attempt fails; None (the default) for
            no limit. An async handler is cancelled at its timeout. A sync one cannot be
            stopped: its key stays leased and its worker slot taken until it returns, then
            the attempt fails. Greater than 0.
        dead_letter_ttl: Seconds a dead letter is kept before workers purge it (they look
            once a minute); None keeps dead letters until ``purge_dead``. Greater than 0;
            default 7 days.
        max_item_bytes: The largest item, in bytes of its JSON encoding; a larger one is
            refused with ``InvalidItem``. An integer, at least 1; default 1 MiB.
        clock: The time, in integer milliseconds since the Unix epoch; tests inject a fake
            one. Default: the system clock.

    Attributes:
        store: The store given.
        name: The batcher's name.
        configured: The rules this process asked for (a ``QueueSpec``; durations in
            milliseconds).
        spec: The rules in effect: the store's, once this process has seen them.
        timeout: The handler timeout in seconds (rounded to the millisecond), or None.
        items_added: Items this object stored since it was made (``add``, ``add_many`` and
            their async forms whose store call returned), for ``redbatch.metrics``.

    Raises:
        ConfigError: A setting is out of range or of the wrong type (``True`` is not a
            number here), or the name is not a valid batcher name.
    """

    def __init__(
        self,
        store: Store,
        name: str,
        *,
        max_items: int = 100,
        max_wait: float = 60.0,
        idle: float | None = None,
        dedupe: bool = False,
        max_attempts: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 300.0,
        lease: float = 30.0,
        timeout: float | None = None,
        dead_letter_ttl: float | None = 7 * 24 * 3600.0,
        max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES,
        clock: Clock = system_clock,
    ) -> None:
        self.store = store
        self.name = check_name(name)
        self.spec = QueueSpec(
            name=self.name,
            max_items=positive_int("max_items", max_items),
            max_wait_ms=seconds_to_ms("max_wait", max_wait),
            idle_ms=0 if idle is None else seconds_to_ms("idle", idle),
            dedupe=bool(dedupe),
            max_attempts=positive_int("max_attempts", max_attempts),
            lease_ms=seconds_to_ms("lease", lease, allow_zero=False),
        )
        if self.spec.lease_ms < 100:
            raise ConfigError(f"lease must be at least 0.1 seconds, not {lease}")
        self.backoff_ms = seconds_to_ms("backoff", backoff)
        self.max_backoff_ms = seconds_to_ms("max_backoff", max_backoff)
        self.timeout = None if timeout is None else seconds_to_ms("timeout", timeout, allow_zero=False) / 1000
        self.dead_letter_ttl_ms = (
            None
            if dead_letter_ttl is None
            else seconds_to_ms("dead_letter_ttl", dead_letter_ttl, allow_zero=False)
        )
        self.max_item_bytes = positive_int("max_item_bytes", max_item_bytes)
        self.clock = clock
        self.configured = self.spec
        self._rules_lock = threading.Lock()
        self._init_producing()
        self._handler: Handler | None = None
        self._handler_is_async = False

    @classmethod
    def open(cls, store: Store, name: str, *, clock: Clock = system_clock) -> Batcher:
        """The batcher ``name`` with the rules ``store`` holds for it, for tools and operators.

        Settings that are not rules (``backoff``, ``timeout``, ...) are the defaults. This
        reads the store once.

        Args:
            store: The store to look in.
            name: The batcher's name.
            clock: The time in integer epoch milliseconds; default the system clock.

        Returns:
            A Batcher whose ``configured`` and ``spec`` are the stored rules.

        Raises:
            NotFound: The store holds no rules for ``name``: nothing was ever added to it and
                no worker ever ran it.
            ConfigError: ``name`` is not a valid batcher name, or the store's record of the
                rules is unreadable (edited by hand; a worker's start publishes them again).
            StoreUnavailable: The store could not be reached in time.
        """
        rules = store.stored_rules(check_name(name))
        if rules is None:
            raise NotFound(f"no batcher {name!r} in {store.url}: nothing was ever added, no worker ran it")
        return cls(
            store,
            name,
            max_items=rules.max_items,
            max_wait=rules.max_wait_ms / 1000,
            idle=rules.idle_ms / 1000 or None,
            dedupe=rules.dedupe,
            max_attempts=rules.max_attempts,
            lease=rules.lease_ms / 1000,
            clock=clock,
        )

    def __repr__(self) -> str:
        return f"Batcher({self.name!r}, store={self.store.url!r})"

    # ------------------------------------------------------------------ handler

    def handler(self, fn: Handler) -> Handler:
        """Register the function (sync or async) that receives this batcher's batches.

        Use it as a decorator (``@batcher.handler``); registering again replaces the handler.
        The handler is called with one ``Batch``; what it returns is ignored. Returning
        means every item is done; raising fails the attempt (retried, then dead-lettered),
        and raising ``ItemsFailed`` fails only the items it names.

        An ``async def`` function, an object whose ``__call__`` is ``async def``, or a
        ``functools.partial`` of either runs on the worker's event loop, so it must not
        block. Anything else runs on one of the worker's handler threads; if it returns an
        awaitable (a lambda or a decorator around an async function), the worker awaits that
        on the loop, within the batcher's ``timeout``.

        Args:
            fn: The handler.

        Returns:
            ``fn`` itself, so the decorated name still names the function.

        Raises:
            ConfigError: ``fn`` is not callable.
        """
        if not callable(fn):
            raise ConfigError("a handler must be callable")
        self._handler = fn
        self._handler_is_async = is_async_callable(fn)
        return fn

    @property
    def handler_fn(self) -> Handler | None:
        """The registered handler, or None before ``handler`` is called."""
        return self._handler

    @property
    def handler_is_async(self) -> bool:
        """True when the handler runs on the worker's event loop rather than a thread.

        A plain function that returns a coroutine (a lambda or decorator around an async
        function) counts as sync: it is called on a handler thread and the worker awaits
        what it returns on the loop, within the batcher's ``timeout``.
        """
        return self._handler_is_async

    # ------------------------------------------------------------------ the rules

    def adopt_rules(self, rules: QueueSpec) -> None:
        """Apply ``rules``, the store's, from now on; warn when they are not this process's.

        Producers adopt them by themselves when the store refuses an append; workers call
        this when they find that another worker published other rules. Applications need not
        call it. It writes nothing to the store: ``configured`` is unchanged, ``spec`` becomes
        ``rules``, and a warning is logged when they differ from ``configured``.

        Args:
            rules: The rules the store holds for this batcher's name.
        """
        with self._rules_lock:
            if rules.version == self.spec.version:
                return
            self.spec = rules
            if rules.version == self.configured.version:
                log.info("batcher %s: the store holds this process's rules again", self.name)
                return
            log.warning(
                "batcher %s: this process configured {%s}, the store holds {%s} (published by the last "
                "worker to start, or recorded by the first producer); using the store's",
                self.name,
                self.configured.describe(),
                rules.describe(),
            )

    # ------------------------------------------------------------------ the retry rule

    def retry_at(self, attempt: int, now_ms: int, rng: random.Random | None = None) -> int | None:
        """When to retry after ``attempt`` failed, or None when attempts are used up.

        Exponential backoff capped at ``max_backoff``, with "equal jitter": half the delay
        is fixed, half random, so retries spread out but never come sooner than half. The
        worker calls this when a handler fails; it reads and writes nothing.

        Args:
            attempt: The attempt that failed, counting from 1.
            now_ms: The time of the failure, in integer epoch milliseconds.
            rng: Where the jitter comes from; default the ``random`` module.

        Returns:
            The retry time in integer epoch milliseconds, ``now_ms`` plus between half and
            all of ``min(max_backoff, backoff * 2 ** (attempt - 1))``; None when ``attempt``
            is the last of the ``max_attempts`` in effect (the batch goes to dead letters).
        """
        if attempt >= self.spec.max_attempts:
            return None
        delay = min(self.max_backoff_ms, self.backoff_ms * (2 ** (attempt - 1)))
        jitter = (rng or random).random()
        return now_ms + int(delay / 2 + jitter * delay / 2)

    # ------------------------------------------------------------------ operators

    def stats(self) -> BatcherStats:
        """The batcher's counters as the store keeps them, across every worker and producer.

        One read; ages are measured with this batcher's clock. A name the store never saw
        has all counters at zero.

        Raises:
            StoreUnavailable: The store could not be reached in time.
        """
        counters = self.store.counters(self.spec)
        now = self.clock()
        age = None if counters.oldest_arrival is None else max(0, now - counters.oldest_arrival) / 1000
        last = counters.last_flush_at
        return BatcherStats(
            name=self.name,
            open_keys=counters.open_keys,
            buffered_items=counters.buffered_items,
            oldest_item_age=age,
            in_flight=counters.in_flight,
            retrying=counters.retrying,
            dead=counters.dead,
            flushed_batches=counters.flushed_batches,
            flushed_items=counters.flushed_items,
            last_flush_at=None if last is None else last / 1000,
            seconds_since_last_flush=None if last is None else max(0, now - last) / 1000,
        )

    def peek(self, key: str, limit: int = 100) -> list[PendingItem]:
        """The oldest ``limit`` items waiting under ``key`` (not those in a running batch).

        Items of the key's current batch, running or waiting to retry, are not listed. A read:
        nothing changes.

        Args:
            key: The key, as ``add`` takes it.
            limit: The most items to list, an integer of at least 1; default 100.

        Returns:
            The items in arrival order. One whose stored bytes do not decode is listed with a
            ``CorruptItem`` as its value, rather than failing the listing.

        Raises:
            InvalidKey: ``key`` is not a valid key.
            ConfigError: ``limit`` is not an integer of at least 1.
            StoreUnavailable: The store could not be reached in time.
        """
        rows = self.store.peek(self.spec, check_key(key), positive_int("limit", limit))
        return [PendingItem(decode_item(p), None if a is None else a / 1000) for a, p in rows]

    def oldest_keys(self, limit: int = 10) -> list[WaitingKey]:
        """The ``limit`` keys whose oldest waiting item has waited longest, oldest first.

        A read of the store's age index (O(log n + limit) on SQLite and Redis), for
        dashboards: which keys hold the oldest items, and why. Keys whose only items are in
        a running or retrying batch are not listed.

        Raises:
            ConfigError: ``limit`` is not an integer of at least 1.
            StoreUnavailable: The store could not be reached in time.
        """
        rows = self.store.oldest_keys(self.spec, positive_int("limit", limit))
        now = self.clock()
        return [
            WaitingKey(key, first / 1000, max(0, now - first) / 1000, count) for key, first, count in rows
        ]

    def clear(self, key: str) -> int:
        """Drop a key's waiting items (and a batch waiting to retry); a running batch finishes.

        One atomic step. The dropped items are gone: they are not dead-lettered.

        Args:
            key: The key, as ``add`` takes it.

        Returns:
            How many items were dropped, those of a batch waiting to retry included; 0 for a
            key that holds nothing.

        Raises:
            InvalidKey: ``key`` is not a valid key. Nothing was changed.
            StoreUnavailable: The store could not be reached in time, or refused the write.
        """
        return self.store.clear(self.spec, check_key(key))

    def flush(self, key: str | None = None) -> int:
        """Make ``key`` (or every idle key with items) due now; return how many keys.

        A key is idle when it has no current batch (running or waiting to retry); a key that
        is not idle, or holds no waiting items, is left alone. Workers are woken. One atomic
        step.

        Args:
            key: The key to flush, as ``add`` takes it; None (the default) for every key.

        Returns:
            How many keys are due now (those that were due already included).

        Raises:
            InvalidKey: ``key`` is not a valid key. Nothing was changed.
            StoreUnavailable: The store could not be reached in time, or refused the write.
        """
        return self.store.flush(self.spec, None if key is None else check_key(key), self.clock())

    def dead_letters(self, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        """The batcher's dead letters, oldest first (by the time they died). A read.

        Args:
            limit: The most letters to list, an integer of at least 1; default 100.
            offset: How many of the oldest to skip, for paging; a negative one counts as 0.

        Returns:
            The letters. An item whose stored bytes do not decode is a ``CorruptItem`` in
            its letter's ``items``, rather than failing the listing.

        Raises:
            ConfigError: ``limit`` is not an integer of at least 1.
            StoreUnavailable: The store could not be reached in time.
        """
        records = self.store.dead_letters(self.spec, positive_int("limit", limit), max(0, offset))
        return [
            DeadLetter(
                id=r.batch_id,
                key=r.key,
                items=[decode_item(p) for p in r.payloads],
                attempts=r.attempts,
                error=r.error,
                created_at=r.created_at / 1000,
                died_at=r.died_at / 1000,
            )
            for r in records
        ]

    def replay(self, ids: Sequence[str] | None = None) -> int:
        """Put dead letters (these ids, or all) back at the front of their keys, due now.

        A key's letters go back in the order they died, their items in arrival order; with
        ``dedupe``, a replayed item collapses with an equal one waiting behind it. The
        store's rules are read first, so replayed items are deduplicated when the store's
        rules say so, whatever this process configured. A replayed batch is a new batch: its
        attempts start again from 1.

        Args:
            ids: The ids (``DeadLetter.id``) of the letters to replay, as a list or tuple (a
                lone str would be read as one id per character); None (the default) for all.

        Returns:
            How many items the replayed letters held (equal ones that collapsed included).

        Raises:
            NotFound: One of ``ids`` is unknown (the error names them). Nothing was replayed.
            ConfigError: ``ids`` is a lone string, not a list of ids. Nothing was replayed.
            StoreUnavailable: The store could not be reached in time, or refused the write.
                With ``ids``, nothing was replayed; replaying all on Redis goes a chunk of
                letters at a time, so those before the failure were replayed.
        """
        stored = self.store.stored_rules(self.name)
        if stored is not None:
            self.adopt_rules(stored)
        return self.store.replay(self.spec, dead_letter_ids(ids), self.clock())

    def purge_dead(self, ids: Sequence[str] | None = None, older_than: float | None = None) -> int:
        """Delete dead letters by id, or those older than ``older_than`` seconds, or all.

        Args:
            ids: The ids of the letters to delete, as a list or tuple (not with
                ``older_than``).
            older_than: Delete the letters that died more than this many seconds ago, by this
                batcher's clock; at least 0. None with no ``ids`` deletes every letter.

        Returns:
            How many letters were deleted.

        Raises:
            NotFound: One of ``ids`` is unknown (the error names them). Nothing was deleted.
            ConfigError: ``older_than`` is not a number of seconds from 0 to 100 years, both
                ``ids`` and ``older_than`` were given, or ``ids`` is a lone string.
                Nothing was deleted.
            StoreUnavailable: The store could not be reached in time, or refused the write.
                With ``ids``, nothing was deleted; deleting by age or all on Redis goes a
                chunk of letters at a time, so those before the failure were deleted.
        """
        if ids is not None and older_than is not None:
            raise ConfigError("purge_dead takes ids or older_than, not both")
        before = None if older_than is None else self.clock() - seconds_to_ms("older_than", older_than)
        return self.store.purge_dead(self.spec, dead_letter_ids(ids), before)
