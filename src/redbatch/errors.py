"""The one exception hierarchy: every error redbatch raises on purpose is a ``RedbatchError``.

Each is raised at the boundary, before anything is stored, so catching one means nothing
partial was written; the exceptions are a ``StoreUnavailable`` that comes after a write was
sent, and ``NotReplicated`` (see their docstrings)::

    RedbatchError
    ├── InvalidItem        (also a ValueError)   an item is not JSON, NaN/inf, or too large
    ├── InvalidKey         (also a ValueError)   a key is empty, too long, not a str, or not
    │                                            valid Unicode (a lone surrogate)
    ├── ConfigError        (also a ValueError)   a bad setting, store URL or URL option
    ├── NotFound           (also a LookupError)  an unknown batcher or dead-letter id
    ├── StoreUnavailable   (also a ConnectionError)  the store cannot be reached in the
    │   │                                        configured time, or refuses writes
    │   ├── PartlyStored   an add_many on Redis Cluster stored the items of some
    │   │                  partitions only (``stored_keys`` says whose)
    │   └── NotReplicated  a Redis write ran on the master, but fewer replicas than
    │                      ``replicas=N`` confirmed it in time
    ├── ItemsFailed        raised *by a handler*: only the named items failed
    └── JobCancelled       raised *by a job function* that stops on a cancel request

The command line maps them to exit codes: ``NotFound`` 3, ``StoreUnavailable`` 4, any other
``RedbatchError`` 1; usage errors exit 2.
"""

from __future__ import annotations

from collections.abc import Iterable


class RedbatchError(Exception):
    """Base class of every error redbatch raises on purpose."""


class InvalidItem(RedbatchError, ValueError):
    """An item is not a JSON value or is larger than the size limit; nothing was stored."""


class InvalidKey(RedbatchError, ValueError):
    """A key is not a non-empty string within the length limit that UTF-8 can encode;
    nothing was stored."""


class ConfigError(RedbatchError, ValueError):
    """A setting or argument is invalid (``max_items < 1``, a negative wait, a bad URL, a lone
    string where a list of ids is expected, ...); nothing was stored."""


class NotFound(RedbatchError, LookupError):
    """An unknown batcher, dead letter, job or group was named; nothing was changed.

    An unknown key is no error: it holds nothing (``peek`` lists nothing, ``clear`` drops 0).
    """


class StoreUnavailable(RedbatchError, ConnectionError):
    """The store could not be reached within the configured time, or refused to write
    (a read-only replica during a failover, out of memory, still loading).

    When the store refused, or could not be reached, nothing was written. When it timed out
    after the command was sent (a Redis command past ``socket_timeout``), the command may
    have run: an ``add`` may have stored its items. Replaying or purging every dead letter
    on Redis goes a chunk at a time, so those before the failure are done.
    """


class PartlyStored(StoreUnavailable):
    """An ``add_many`` on Redis Cluster stored the items of some keys and not of others.

    On a cluster, a call's items are stored partition by partition (a partition's keys sit
    on one master; several masters cannot share a transaction): each partition's items are
    stored all or none, and a partition whose call failed on a dropped connection was sent
    once more, marked with the same call id, so that one stored before the drop is not
    stored twice. When a partition still failed, this is raised.

    Attributes:
        stored_keys: The keys all of whose items in the call are stored.
        failed_keys: The other keys of the call. Their items were not stored, unless their
            partition timed out after receiving the command (then they may have been):
            adding them again stores them, perhaps twice after a timeout.
    """

    def __init__(self, message: str, stored_keys: Iterable[str], failed_keys: Iterable[str]) -> None:
        super().__init__(message)
        self.stored_keys = frozenset(stored_keys)
        self.failed_keys = frozenset(failed_keys)


class NotReplicated(StoreUnavailable):
    """A write ran on the Redis master, but fewer replicas than the store's ``replicas=N``
    confirmed it within ``replicas_timeout`` (a replica down, or lagging).

    The write is not undone: it is on the master and on ``confirmed`` replicas, and may or
    may not survive a failover. The caller may retry; a retried ``add`` may store its items
    twice (handlers see them twice), a retried acknowledgement or other lease-holder step
    is refused or does nothing when the first one held. A worker meeting this on a claim
    leaves the batches it leased to be reclaimed when their lease lapses.

    Attributes:
        confirmed: The replicas that confirmed the write.
        wanted: The replicas the store asks for (``replicas=N``).
    """

    def __init__(self, confirmed: int, wanted: int, timeout: float) -> None:
        super().__init__(
            f"the write ran on the Redis master, but {confirmed} of the {wanted} replicas asked for"
            f" confirmed it within {timeout:g}s; it may not survive a failover"
        )
        self.confirmed = confirmed
        self.wanted = wanted


class ItemsFailed(RedbatchError):
    """Raised by a handler: only the items at ``indexes`` failed; the rest are done.

    The batch keeps its id and shrinks to the failed items, which are retried with backoff
    and, after ``max_attempts``, dead-lettered alone: a poison item does not sink its batch.

    Naming every item fails the whole attempt, as any other exception would; naming none
    counts as success. An index that is not an int within the batch fails the whole
    attempt, with an error saying so.

    Args:
        indexes: Positions in ``Batch.items`` as the batch was handed over (whatever the
            handler did to the list since); repeats count once.
        reason: Why they failed; recorded as the attempt's error (``"ItemsFailed: ..."``).

    Attributes:
        indexes: The indexes given, as a tuple.
        reason: The reason given.
    """

    def __init__(self, indexes: Iterable[int], reason: str = "some items failed") -> None:
        self.indexes = tuple(indexes)
        self.reason = reason
        super().__init__(f"{reason} (items {list(self.indexes)})")


class JobCancelled(RedbatchError):
    """Raised by a job function that stops because ``JobContext.cancelled`` became true: the
    job ends ``cancelled`` (not failed, not retried). Returning normally after seeing the
    request ends it ``cancelled`` too."""
