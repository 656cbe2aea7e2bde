"""Quota invariants under random operation sequences (Hypothesis state machine) and
under threads of one process sharing one quota object."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pycvmfs.cache import CacheConfig, CacheFullError, CacheHost, ObjectKind
from pycvmfs.cache.admin import verify
from pycvmfs.format.hashes import Algorithm, ContentHash

LIMIT_MB = 1
MAX_OBJECT = (LIMIT_MB << 20) // 2


def h(n: int) -> ContentHash:
    return ContentHash.of(Algorithm.SHA1, n.to_bytes(4, "big"))


class QuotaMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.host = CacheHost(CacheConfig(Path(self.tmp.name), quota_limit_mb=LIMIT_MB))
        self.pinned: dict[ContentHash, int] = {}
        self.held: set[ContentHash] = set()
        self.sizes: dict[ContentHash, int] = {}

    @rule(n=st.integers(0, 40), size=st.integers(0, MAX_OBJECT + 10), volatile=st.booleans())
    def insert(self, n: int, size: int, volatile: bool) -> None:
        txn = self.host.begin(h(n))
        txn.write(b"x" * size)
        try:
            self.host.commit(txn, volatile=volatile)
        except CacheFullError:
            assert size > MAX_OBJECT or self.held
            return
        self.sizes[h(n)] = size

    @rule(n=st.integers(0, 40))
    def read(self, n: int) -> None:
        fh = self.host.open(h(n))
        if fh is not None:
            with fh:
                assert len(fh.read()) == self.sizes[h(n)]

    @rule(n=st.integers(0, 40), size=st.integers(1, MAX_OBJECT // 2))
    def pin(self, n: int, size: int) -> None:
        if h(n) in self.pinned:
            return
        try:
            self.host.pin(h(n), size)
        except CacheFullError:
            assert sum(self.pinned.values()) + size > MAX_OBJECT
            return
        self.pinned[h(n)] = size
        txn = self.host.begin(h(n))
        txn.write(b"c" * size)
        self.host.commit(txn, kind=ObjectKind.CATALOG)
        self.sizes[h(n)] = size

    @precondition(lambda self: bool(self.pinned))
    @rule(data=st.data())
    def unpin(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.pinned, key=str)))
        self.host.unpin(key)
        del self.pinned[key]

    @rule(n=st.integers(0, 40))
    def hold(self, n: int) -> None:
        if self.host.store.contains(h(n)) and len(self.held) < 2:
            self.host.open_ref(h(n))
            self.held.add(h(n))

    @rule(leave=st.integers(0, LIMIT_MB << 20))
    def cleanup(self, leave: int) -> None:
        self.host.quota.cleanup(leave)
        pinned = sum(self.sizes[k] for k in set(self.pinned) | self.held)
        assert self.host.quota.size() <= max(leave, pinned)

    @invariant()
    def consistent(self) -> None:
        files = {k: s for k, s, _ in self.host.store.iter_objects()}
        assert sum(files.values()) == self.host.quota.size() <= LIMIT_MB << 20
        for key in list(self.pinned) + list(self.held):
            assert str(key) in files, "pinned or open object evicted"

    def teardown(self) -> None:
        self.host.close()
        assert verify(self.tmp.name) == []
        self.tmp.cleanup()


QuotaMachine.TestCase.settings = settings(max_examples=15, stateful_step_count=25,
                                          deadline=None)
TestQuotaMachine = QuotaMachine.TestCase


def test_threads_share_one_host(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    with CacheHost(CacheConfig(tmp_path, quota_limit_mb=LIMIT_MB)) as host:

        def work(worker: int) -> None:
            try:
                for i in range(60):
                    n = (i * 5 + worker) % 50
                    fh = host.open(h(n))
                    if fh is not None:
                        with fh:
                            assert fh.read() == bytes([n]) * (5000 + 300 * n)
                        continue
                    txn = host.begin(h(n))
                    txn.write(bytes([n]) * (5000 + 300 * n))
                    host.commit(txn)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        files = {k: s for k, s, _ in host.store.iter_objects()}
        assert sum(files.values()) == host.quota.size() <= LIMIT_MB << 20
    assert verify(tmp_path) == []
