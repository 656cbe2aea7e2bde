"""Which cached objects to evict: a pure planner (style guide R8, fact sheet 9.3).

No I/O, no clock, no state: `plan_eviction(entries, need)` looks at a snapshot of the
index and names the victims. The quota manager (`quota.py`) takes the snapshot under its
locks and performs the deletions, so this module is trivially thread- and process-safe.

Order (the reference `cachedb` semantics):
1. pinned entries are never chosen (catalogs in use, objects of open files);
2. volatile entries (repositories whose root catalog says `volatile=1`) go before all
   others — the reference sets bit 63 of their `acseq`, which makes it negative;
3. within each class the smallest access sequence number (`acseq`), i.e. the least
   recently used, goes first;
4. planning stops as soon as the freed bytes reach `need`.

If even every unpinned entry does not free `need` bytes, all unpinned entries are returned
and the caller sees the shortfall by summing their sizes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EvictionEntry:
    """One row of the index as the planner sees it; `key` is the textual hash."""

    key: str
    size: int
    acseq: int
    pinned: bool = False
    volatile: bool = False


def eviction_order(entry: EvictionEntry) -> tuple[bool, int]:
    """Sort key: volatile first, then ascending access sequence."""
    return (not entry.volatile, entry.acseq)


def plan_eviction(entries: Iterable[EvictionEntry], need: int) -> list[str]:
    """Keys to delete, in deletion order, freeing at least `need` bytes when possible."""
    if need <= 0:
        return []
    victims: list[str] = []
    freed = 0
    for entry in sorted((e for e in entries if not e.pinned), key=eviction_order):
        victims.append(entry.key)
        freed += entry.size
        if freed >= need:
            break
    return victims
