"""The Redis store, as a package: the store beside its Lua scripts (``lua/``)."""

from redbatch.stores.redis.store import RedisStore

__all__ = ["RedisStore"]
