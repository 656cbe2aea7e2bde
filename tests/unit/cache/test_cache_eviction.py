"""Properties of the pure eviction planner (style guide R8)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pycvmfs.cache.eviction import EvictionEntry, eviction_order, plan_eviction


@st.composite
def entry_lists(draw: st.DrawFn) -> list[EvictionEntry]:
    n = draw(st.integers(0, 30))
    seqs = draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n, unique=True))
    return [
        EvictionEntry(
            key=f"k{i}",
            size=draw(st.integers(0, 1000)),
            acseq=seq,
            pinned=draw(st.booleans()),
            volatile=draw(st.booleans()),
        )
        for i, seq in enumerate(seqs)
    ]


@given(entry_lists(), st.integers(-10, 20000))
def test_plan_properties(entries: list[EvictionEntry], need: int) -> None:
    victims = plan_eviction(entries, need)
    by_key = {e.key: e for e in entries}
    chosen = [by_key[k] for k in victims]
    assert len(set(victims)) == len(victims)
    assert not any(e.pinned for e in chosen)  # never a pinned entry
    freed = sum(e.size for e in chosen)
    if need <= 0:
        assert victims == []
        return
    # deletion order: volatile first, then ascending acseq
    assert chosen == sorted(chosen, key=eviction_order)
    # the victims are a prefix of the unpinned entries in eviction order
    unpinned = sorted((e for e in entries if not e.pinned), key=eviction_order)
    assert chosen == unpinned[: len(chosen)]
    # stops as soon as enough is freed; frees everything possible otherwise
    if freed >= need:
        assert freed - chosen[-1].size < need
    else:
        assert chosen == unpinned


def test_volatile_goes_before_older_regular() -> None:
    entries = [
        EvictionEntry("old", 10, acseq=1),
        EvictionEntry("vol", 10, acseq=50, volatile=True),
        EvictionEntry("pinned", 100, acseq=0, pinned=True),
        EvictionEntry("new", 10, acseq=9),
    ]
    assert plan_eviction(entries, 15) == ["vol", "old"]
    assert plan_eviction(entries, 1000) == ["vol", "old", "new"]
    assert plan_eviction(entries, 0) == []
