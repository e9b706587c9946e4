"""The Redis store: batching state in Redis, every multi-step change one Lua script.

    store.py         RedisStore: producing, claiming, the lease holders' steps, operators
    rules.py         a batcher's rules, a copy in every partition
    dead_letters.py  listing, replaying and purging dead letters
    jobs.py          job queues' records (stores.base.JobStore): one partition per queue
    waiter.py        a worker's sleep, ended by the scripts' PUBLISH
    core.py          what the parts share: partitions, key names, entry framing
    client.py        the client and its timeouts; the scripts, registered once
    errors.py        the one place redis-py's errors become redbatch's
    lua/             one script per step; lib.lua, the prelude of each, draws the key layout

Each script names the transitions of ``redbatch.engine`` it makes (``-- transition: ack``).
"""

from redbatch.stores.redis.store import RedisStore

__all__ = ["RedisStore"]
