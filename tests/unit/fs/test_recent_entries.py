"""`fs.recent.RecentEntries`: answers kept by inode serve only the revision they came
from, a bounded number of them, and forgotten inodes go."""

from __future__ import annotations

import dataclasses
import stat
from typing import cast

from pycvmfs.format.catalog import DirEntry, Flags
from pycvmfs.fs.recent import RecentEntries
from pycvmfs.repository.repository import Repository


def _revision() -> Repository:
    return cast(Repository, object())  # only its identity matters here


def _entry(name: str) -> DirEntry:
    return DirEntry(name, stat.S_IFREG | 0o644, 1, 0, int(Flags.FILE))


def test_an_answer_serves_only_its_own_revision() -> None:
    recent, old, new = RecentEntries(), _revision(), _revision()
    recent.remember(5, old, "/a", _entry("a"))
    assert recent.get(5, old) == ("/a", _entry("a"))
    assert recent.get(5, new) is None  # another revision: resolved again
    assert recent.get(6, old) is None


def test_the_least_recently_used_go_first_and_forgotten_inodes_go() -> None:
    recent, revision = RecentEntries(capacity=2), _revision()
    for ino in (1, 2):
        recent.remember(ino, revision, f"/{ino}", _entry(str(ino)))
    recent.remember(1, revision, "/1", _entry("1"))  # used again: 2 is now the oldest
    recent.remember(3, revision, "/3", _entry("3"))
    assert [recent.get(i, revision) is not None for i in (1, 2, 3)] == [True, False, True]
    recent.forget([1])
    assert recent.get(1, revision) is None and len(recent) == 1
    recent.clear()
    assert len(recent) == 0



def test_inodes_without_xattrs_are_known_past_the_window_for_their_revision_only() -> None:
    recent, old, new = RecentEntries(capacity=1), _revision(), _revision()
    with_xattrs = dataclasses.replace(_entry("x"), xattrs=(("user.a", b"1"),))
    recent.remember(5, old, "/a", _entry("a"))
    recent.remember(6, old, "/x", with_xattrs)
    recent.remember(7, old, "/b", _entry("b"))
    assert recent.get(5, old) is None  # out of the window, still known to be bare
    assert recent.has_no_xattrs(5, old) and recent.has_no_xattrs(7, old)
    assert not recent.has_no_xattrs(6, old)  # has xattrs: the catalog answers
    assert not recent.has_no_xattrs(5, new)  # another revision knows nothing yet
    recent.forget([5])
    assert not recent.has_no_xattrs(5, old)
    recent.remember(8, new, "/c", _entry("c"))  # a newer revision starts afresh
    assert not recent.has_no_xattrs(7, old) and not recent.has_no_xattrs(7, new)
    recent.clear()
    assert not recent.has_no_xattrs(8, new)
