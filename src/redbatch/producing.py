"""The producers' half of ``Batcher``: checking items, and the store calls that add them.

Every add goes through a coalescer (``redbatch.coalesce``): threads through ``Coalescer``,
coroutines through ``AsyncCoalescer``, whose leader awaits the store's ``append_async`` where
the store has one (Redis, on redis-py's asyncio client) and otherwise hands the group to the
thread coalescer on the store's one thread. The rules retry (a worker published other rules)
is written once, for threads; the asyncio path takes it on a thread, as it is rare.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import orjson

from redbatch.checks import DUMPS_OPTIONS, check_key, encode_item, item_digest
from redbatch.coalesce import AsyncCoalescer, Coalescer, store_thread
from redbatch.stores.base import RulesChanged, Store
from redbatch.types import Clock, Entry, QueueSpec

RULES_ATTEMPTS = 3
"""Appends tried per add when the store keeps holding other rules (a publish in between)."""


class Producer:
    """``add``, ``add_many`` and their asyncio forms, mixed into ``Batcher``."""

    store: Store
    name: str
    spec: QueueSpec
    configured: QueueSpec
    clock: Clock
    max_item_bytes: int

    def adopt_rules(self, rules: QueueSpec) -> None:
        raise NotImplementedError

    def _init_producing(self) -> None:
        self._coalescer = Coalescer(self._append_now)
        self._async_coalescer = AsyncCoalescer(self._append_async)
        self.items_added = 0
        """Items this process stored through this batcher (for metrics); an exact count
        while one path adds (each coalescer makes one store call at a time)."""

    # ------------------------------------------------------------------ store calls

    def _append_now(self, entries: list[Entry]) -> None:
        """One store call for the adds the coalescer grouped; they arrive now, as it starts."""
        self._append(entries, self.clock())

    def _append(self, entries: list[Entry], now_ms: int, refused: QueueSpec | None = None) -> None:
        """Append under the rules in effect; when the store holds others, adopt them, retry.
        ``refused``: the rules a first try (``append_async``) was refused under."""
        attempt = 1
        if refused is not None:
            attempt = 2
            entries = self._adopt_stored(refused, entries)
        while True:
            spec = self.spec
            try:
                self.store.append(spec, entries, now_ms)
                self.items_added += len(entries)
                return
            except RulesChanged:
                if attempt == RULES_ATTEMPTS:
                    raise
                attempt += 1
                entries = self._adopt_stored(spec, entries)

    def _adopt_stored(self, refused: QueueSpec, entries: list[Entry]) -> list[Entry]:
        """Adopt the store's rules after an append under ``refused``; the entries to retry."""
        # None: the record vanished (a flushed Redis); the retry records this process's.
        self.adopt_rules(self.store.stored_rules(self.name) or self.configured)
        if self.spec.dedupe != refused.dedupe:
            entries = [self._with_digest(e) for e in entries]
        return entries

    async def _append_async(self, entries: list[Entry]) -> None:
        """The asyncio leader's store call for the adds it grouped."""
        append_async = getattr(self.store, "append_async", None)
        if append_async is None:  # one thread per store; shared with this batcher's threads' adds
            await asyncio.get_running_loop().run_in_executor(
                store_thread(self.store), self._coalescer.submit, entries
            )
            return
        spec, now_ms = self.spec, self.clock()
        try:
            await append_async(spec, entries, now_ms)
            self.items_added += len(entries)
        except RulesChanged:  # rare (a worker published other rules): the retry, on a thread
            await asyncio.to_thread(self._append, entries, now_ms, spec)

    def _with_digest(self, entry: Entry) -> Entry:
        """An entry re-encoded for the dedupe rule in effect (its payload is valid JSON)."""
        digest = item_digest(orjson.loads(entry.payload)) if self.spec.dedupe else ""
        return entry._replace(digest=digest)

    # ------------------------------------------------------------------ producing

    def _entry(self, key: str, item: Any) -> Entry:
        key = check_key(key)
        payload = encode_item(item, self.max_item_bytes)
        return Entry(key, payload, item_digest(item) if self.spec.dedupe else "")

    def _entries(self, items: Iterable[tuple[str, Any]]) -> list[Entry]:
        """``_entry`` of each pair, as one loop: ``add_many``'s own cost per item. A key
        repeated in the call is checked once; an item is encoded here and handed to
        ``encode_item`` (the checks, and their errors) only when it might fail them: orjson
        refused it, it is too large, or it holds a null (NaN and infinities encode as one);
        ``tuple.__new__`` makes each ``Entry`` in C (``Entry._make`` and ``Entry(...)`` are
        Python functions around it, some 100 ns more per item)."""
        keys: dict[str, str] = {}
        dedupe, limit, new, dumps = self.spec.dedupe, self.max_item_bytes, tuple.__new__, orjson.dumps
        entries = []
        for key, item in items:
            checked = keys.get(key) if type(key) is str else None
            if checked is None:
                checked = keys[key] = check_key(key)
            try:
                encoded = dumps(item, option=DUMPS_OPTIONS)
            except TypeError:
                encoded = b"null"  # encode_item raises the InvalidItem
            if len(encoded) > limit or encoded.find(b"null") != -1:
                payload = encode_item(item, limit)
            else:
                payload = b"%b" % encoded  # a compact copy, as encode_item keeps
            entries.append(new(Entry, (checked, payload, item_digest(item) if dedupe else "")))
        return entries

    def add(self, key: str, item: Any) -> None:
        """Add one item under ``key``; it is durable (as the store allows) when this returns.

        One store call, made under the rules in effect. Adds (and ``add_many`` calls) made
        by other threads of this process while a store call of this batcher is on its way
        share the next one (group commit, see ``redbatch.coalesce``): the item is checked and
        encoded here, then stored with theirs, and its arrival time is that call's start. A
        lone add makes its call at once, on this thread. When the store holds other rules (a
        worker published new ones), nothing is stored: the batcher adopts the store's rules,
        logs a warning, and adds again under them.

        Args:
            key: What the item is grouped by (a chat, an agent, a profile): a non-empty
                ``str`` of at most 512 characters that UTF-8 can encode (no lone surrogates).
            item: A JSON value: a dict with str keys, a list or tuple, a str, an int within
                64 bits, a finite float, a bool or None, at most ``max_item_bytes`` encoded.
                The handler receives it decoded from JSON, so a tuple comes back as a list.
                (orjson also takes a ``uuid.UUID``, sent as its string, and an enum member,
                sent as its value.)

        Raises:
            InvalidKey: ``key`` is not a valid key. Nothing was stored.
            InvalidItem: ``item`` is not a JSON value (a set, bytes, a dataclass, a datetime,
                a subclass of str or int, NaN or an infinity, ...) or is too large. Nothing
                was stored.
            StoreUnavailable: The store could not be reached in time, or refused the write
                (a read-only replica during a failover, out of memory). Nothing was stored,
                unless the store timed out after receiving the command (a Redis command that
                timed out may have run): then adding again may store the item twice. Every
                add carried by that store call gets the same exception.
            RedbatchError: Any other error the store reported (a Redis error); or the store's
                rules changed under three tries in a row (``RulesChanged``). Nothing was
                stored.
        """
        self._coalescer.submit([self._entry(key, item)])

    def add_many(self, items: Iterable[tuple[str, Any]]) -> int:
        """Add many (key, item) pairs in one round trip, all or none; return how many.

        Every pair is checked before anything is sent, so one bad pair stores nothing. An
        empty iterable makes no store call. Concurrent adds share the store call, as for
        ``add``; the pairs are never split over two calls.

        Args:
            items: (key, item) pairs, each as ``add`` takes them; consumed once.

        Returns:
            How many items were added.

        Raises:
            InvalidKey: A key is not a valid key. Nothing was stored.
            InvalidItem: An item is not a JSON value or is too large. Nothing was stored.
            StoreUnavailable: As for ``add``: nothing was stored, unless the store timed out
                after receiving the command (then all may have been). On Redis Cluster the
                pairs are stored all or none per partition: ``PartlyStored``, a
                ``StoreUnavailable``, names the keys stored when only some partitions were.
            RedbatchError: As for ``add``. Nothing was stored.
        """
        entries = self._entries(items)
        if entries:
            self._coalescer.submit(entries)
        return len(entries)

    async def add_async(self, key: str, item: Any) -> None:
        """``add`` for async code, on the event loop: no thread in the way on Redis.

        The item is checked here. Adds of this loop's other coroutines made while a store
        call of this batcher is on its way share the next one (one leader task per loop
        makes it), as threads' adds do; on Redis the call is made on redis-py's asyncio
        client, with the same script. Stores without an asyncio client (SQLite, memory) make
        it on one thread per store, sharing it with this batcher's threads' adds. It raises
        what ``add`` raises, with the same meaning; ``InvalidKey`` and ``InvalidItem`` before
        anything is sent. Cancelled while its store call is on its way, the item may or may
        not be stored, as when ``add`` times out.
        """
        await self._async_coalescer.submit([self._entry(key, item)])

    async def add_many_async(self, items: Iterable[tuple[str, Any]]) -> int:
        """``add_many`` for async code, on the event loop as ``add_async`` is. Returns and
        raises what ``add_many`` does."""
        entries = self._entries(items)
        if entries:
            await self._async_coalescer.submit(entries)
        return len(entries)
