"""The state API's ``KVStore`` on Redis (standalone or Cluster) via redis-py; see ``kv`` and docs/state-redis.md."""

from taskplane.storage.redis.kv import RedisKVStore

__all__ = ["RedisKVStore"]
