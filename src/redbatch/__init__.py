"""redbatch: durable, keyed micro-batching and job tracking for Python services."""

from redbatch.batcher import Batcher
from redbatch.errors import (
    ConfigError,
    InvalidItem,
    InvalidKey,
    ItemsFailed,
    JobCancelled,
    NotFound,
    NotReplicated,
    PartlyStored,
    RedbatchError,
    StoreUnavailable,
)
from redbatch.hooks import WorkerHooks
from redbatch.jobs import Jobs
from redbatch.jobtypes import GroupDone, GroupProgress, Job, JobContext, JobPage
from redbatch.stores import Store, connect
from redbatch.types import Batch, BatcherStats, CorruptItem, DeadLetter, PendingItem
from redbatch.worker import Worker

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "Batcher",
    "BatcherStats",
    "ConfigError",
    "CorruptItem",
    "DeadLetter",
    "GroupDone",
    "GroupProgress",
    "InvalidItem",
    "InvalidKey",
    "ItemsFailed",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobPage",
    "Jobs",
    "NotFound",
    "NotReplicated",
    "PartlyStored",
    "PendingItem",
    "RedbatchError",
    "Store",
    "StoreUnavailable",
    "Worker",
    "WorkerHooks",
    "connect",
]
