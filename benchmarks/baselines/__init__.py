"""The hand-written patterns redbatch replaces, and the raw-Redis ceilings.

- ``per_item``: a list, a metadata key and an index set per batch, three round trips per
  item, and a stale-batch worker that scans the whole index.
- ``list_lock``: a list per conversation and a ``SET NX EX`` processing lock.
- ``celery_batches_app``: Celery's ``Batches`` task class on a Redis broker.
- ``raw_redis``: plain ``RPUSH`` from Python, and ``redis-benchmark``.

Each is written the way the seeds' code does it, including its races; they are measured,
not fixed.
"""
