"""Cache errors: `CacheFullError` lives in `pycvmfs.errors` (errno ENOSPC); re-exported
here so `from pycvmfs.cache import CacheFullError` keeps working."""

from __future__ import annotations

from pycvmfs.errors import CacheFullError

__all__ = ["CacheFullError"]
