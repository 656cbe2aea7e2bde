"""Client cache: content-addressed store, LRU quota, eviction planner, breadcrumb.

Knows nothing of catalogs, FUSE or the network (style guide R1); `fetcher.py` is the one
module allowed to join it with `pycvmfs.network`. Every file and directory under the cache
base is reached through the checked descriptors of `safe_dir` (other local users cannot
redirect or plant anything), and `identity` decides whether what a directory holds may be
trusted (the ownership marker).
"""

from __future__ import annotations

from pycvmfs.cache.breadcrumb import Breadcrumb, read_breadcrumb, write_breadcrumb
from pycvmfs.cache.errors import CacheFullError
from pycvmfs.cache.eviction import EvictionEntry, plan_eviction
from pycvmfs.cache.host import CacheConfig, CacheHost
from pycvmfs.cache.quota import SqliteLruQuota
from pycvmfs.cache.quota_protocol import NoopQuota, ObjectKind, Quota
from pycvmfs.cache.store import ObjectStore, Txn

__all__ = [
    "Breadcrumb",
    "CacheConfig",
    "CacheFullError",
    "CacheHost",
    "EvictionEntry",
    "NoopQuota",
    "ObjectKind",
    "ObjectStore",
    "Quota",
    "SqliteLruQuota",
    "Txn",
    "plan_eviction",
    "read_breadcrumb",
    "write_breadcrumb",
]
