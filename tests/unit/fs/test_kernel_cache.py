"""kernel_cache: what a revision change makes the kernel drop (listings, changed
attributes, stale and appeared names, a bounded pass), the drain-window listings dropped
once more, and `HandOut` counting and giving back the entries of one READDIRPLUS."""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterable

import pytest

from pycvmfs.fs import kernel_cache
from pycvmfs.fs.kernel_cache import HandOut, KernelCache
from tests.fake_vfs import FakeVFS


class Names:
    """What KernelCache asks of the VFS, scripted."""

    def __init__(self) -> None:
        self.known: list[tuple[int, str]] = []
        self.stale: list[tuple[int, str]] = []
        self.changed: list[int] = []
        self.existing: set[tuple[int, str]] = set()
        self.draining_now = False

    def known_entries(self) -> Iterable[tuple[int, str]]:
        return list(self.known)

    def revision_changes(self) -> tuple[list[tuple[int, str]], list[int]]:
        return self.stale, self.changed

    def appeared(self, parent: int, name: str) -> bool:
        return (parent, name) in self.existing

    def draining(self) -> bool:
        return self.draining_now


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, object]] = []
        self.failing: set[int] = set()

    def inode(self, ino: int, attributes_only: bool) -> None:
        self.calls.append(("inode", ino, attributes_only))
        if ino in self.failing:
            raise OSError(errno.ENOENT, "forgotten")

    def entry(self, parent: int, name: bytes) -> None:
        self.calls.append(("entry", parent, name))


def make(names: Names, recorder: Recorder, *, timeout: float = 60.0,
         redrain_s: float | None = None, clock: list[float] | None = None) -> KernelCache:
    now = clock if clock is not None else [0.0]
    return KernelCache(names, recorder.inode, recorder.entry, timeout, redrain_s=redrain_s,
                       clock=lambda: now[0])


def test_a_revision_change_drops_listings_attributes_and_names() -> None:
    names, recorder = Names(), Recorder()
    cache = make(names, recorder)
    cache.listed(1)
    cache.listed(7)
    names.known = [(7, "kept"), (8, "gone")]
    names.stale = [(8, "gone")]
    names.changed = [20]
    assert cache.missing(1, b"later", errno.ENOENT)
    assert cache.missing(1, b"never", errno.ENOENT)
    assert not cache.missing(1, b"denied", errno.EACCES)  # not cached by the kernel
    names.existing = {(1, "later")}
    recorder.failing = {7}  # the kernel had forgotten it: the pass goes on
    assert cache.invalidate() == 0
    inodes = sorted(c for c in recorder.calls if c[0] == "inode")
    assert inodes == [("inode", 1, False), ("inode", 7, False), ("inode", 8, False),
                      ("inode", 20, True)]
    assert [c for c in recorder.calls if c[0] == "entry"] == [("entry", 8, b"gone"),
                                                              ("entry", 1, b"later")]
    recorder.calls.clear()
    names.known, names.stale, names.changed = [], [], []
    cache.invalidate()  # negatives are handed over once
    assert recorder.calls == [("inode", 1, False), ("inode", 7, False)]


def test_the_pass_stops_at_the_entry_timeout() -> None:
    names, recorder = Names(), Recorder()
    clock = [0.0]
    cache = make(names, recorder, timeout=1.0, clock=clock)
    names.stale = [(1, f"n{i}") for i in range(5)]

    def slow_entry(parent: int, name: bytes) -> None:
        recorder.entry(parent, name)
        clock[0] += 0.6

    cache._inval_entry = slow_entry
    assert cache.invalidate() == 3  # two went out, the kernel expires the rest itself
    assert len(recorder.calls) == 2


def test_forgotten_directories_are_not_invalidated() -> None:
    names, recorder = Names(), Recorder()
    cache = make(names, recorder)
    cache.listed(5)
    cache.forgotten([5])
    cache.invalidate()
    assert recorder.calls == []


def test_negatives_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel_cache, "MAX_TRACKED_NEGATIVES", 3)
    names, recorder = Names(), Recorder()
    cache = make(names, recorder)
    for i in range(5):
        cache.negative(1, f"n{i}".encode())
    names.existing = {(1, f"n{i}") for i in range(5)}
    cache.invalidate()
    assert [c[2] for c in recorder.calls] == [b"n2", b"n3", b"n4"]  # the oldest forgotten


def test_listings_answered_while_draining_are_dropped_again() -> None:
    names, recorder = Names(), Recorder()
    cache = make(names, recorder, redrain_s=0.2)
    done = threading.Event()
    cache._inval_inode = lambda ino, attributes_only: (recorder.inode(ino, attributes_only),
                                                       done.set())
    cache.answered_listing(4)  # not draining: nothing to redo
    names.draining_now = True
    cache.invalidate_all()
    cache.answered_listing(5)
    cache.answered_listing(6)
    cache.forgotten([6])
    assert done.wait(2.0)
    assert recorder.calls == [("inode", 5, False)]
    cache.stop()


def test_without_redrain_no_timer_runs() -> None:
    names, recorder = Names(), Recorder()
    cache = make(names, recorder)
    names.draining_now = True
    cache.answered_listing(5)
    cache.invalidate_all()
    assert cache._redrain is None and cache._listed_draining == set()


def test_hand_out_counts_all_but_the_dots_and_gives_back() -> None:
    vfs = FakeVFS({"a": b"1", "b": b"2", "c": b"3"})
    handle = vfs.opendir(1)
    items = list(vfs.readdir(handle))
    handed = HandOut(vfs)  # type: ignore[arg-type]
    for item in items[:4]:  # . .. a b
        handed.attr(item)
    assert vfs.held == {vfs.inodes["a"]: 1, vfs.inodes["b"]: 1}
    handed.take_back_last()  # b did not fit
    handed.take_back_last()  # only the last one can be
    assert vfs.held == {vfs.inodes["a"]: 1}
    handed.attr(items[0])
    handed.take_back_last()  # a dot: nothing was counted
    handed.take_back()  # the reply never reached the kernel
    assert vfs.held == {}
    handed.take_back()
    assert vfs.held == {}
