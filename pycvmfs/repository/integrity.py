"""Integrity problems found in signed but hostile content, logged once each.

A catalog can be validly signed and still be wrong (a name with `/`, a nested catalog that
references itself, a hardlink group mixing files). The reader refuses only the entry or
subtree concerned and answers EIO there; the mount goes on. Each distinct problem is logged
once, so a client that keeps asking for a broken path cannot flood the log.

Thread-safety: `report_once` may be called from any thread.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

log = logging.getLogger("pycvmfs.integrity")
REMEMBERED_PROBLEMS = 4096  # distinct messages kept to suppress repeats (oldest forgotten)

_lock = threading.Lock()
_seen: OrderedDict[str, None] = OrderedDict()


def report_once(message: str) -> bool:
    """Log `message` as an integrity error unless it was logged recently; True if logged."""
    with _lock:
        if message in _seen:
            _seen.move_to_end(message)
            return False
        _seen[message] = None
        if len(_seen) > REMEMBERED_PROBLEMS:
            _seen.popitem(last=False)
    log.error("integrity: %s", message)
    return True
