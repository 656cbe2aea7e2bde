"""`limits.confine_to_cpus`: which CPUs every thread of the serving process gets, with the
scheduler faked (a unit test must not move its own process)."""

from __future__ import annotations

import errno
import os

import pytest

from pycvmfs.fs import limits


class FakeScheduler:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, allowed: set[int], tasks: list[str],
                 *, current: int = 1, refuse: int | None = None) -> None:
        self.set: dict[int, set[int]] = {}
        self.refuse = refuse
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(allowed))
        monkeypatch.setattr(os, "sched_setaffinity", self.setaffinity)
        real_listdir = os.listdir
        monkeypatch.setattr(os, "listdir", lambda path: list(tasks) if path == "/proc/self/task"
                            else real_listdir(path))
        monkeypatch.setattr(limits, "_current_cpu", lambda allowed: current)

    def setaffinity(self, pid: int, cpus: set[int]) -> None:
        if pid == 99:
            raise ProcessLookupError(errno.ESRCH, "No such process")
        if self.refuse is not None:
            raise OSError(self.refuse, os.strerror(self.refuse))
        self.set[pid] = set(cpus)


def test_without_a_list_every_thread_shares_the_cpu_it_runs_on(monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    fake = FakeScheduler(monkeypatch, {0, 1, 2, 3}, ["10", "11", "99"], current=2)
    assert limits.confine_to_cpus(None, single=True) is None
    assert fake.set == {10: {2}, 11: {2}}  # a thread that ended is skipped


def test_single_cpu_off_or_one_cpu_allowed_changes_nothing(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    fake = FakeScheduler(monkeypatch, {0, 1}, ["10"])
    assert limits.confine_to_cpus(None, single=False) is None
    fake = FakeScheduler(monkeypatch, {5}, ["10"])
    assert limits.confine_to_cpus(None, single=True) is None
    assert fake.set == {}


def test_a_list_gives_every_thread_all_its_allowed_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """As the reference: every task gets the whole list (less what the cpuset forbids)."""
    fake = FakeScheduler(monkeypatch, {0, 1, 2, 3}, ["10", "11"])
    assert limits.confine_to_cpus(frozenset({1, 3, 7}), single=True) is None
    assert fake.set == {10: {1, 3}, 11: {1, 3}}


def test_a_list_of_unavailable_cpus_is_a_warning_and_nothing_moves(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeScheduler(monkeypatch, {0, 1}, ["10"])
    warning = limits.confine_to_cpus(frozenset({4, 6}), single=True)
    assert warning == ("CVMFS_CPU_AFFINITY=4,6: none of these CPUs is available to this "
                       "process (it may use 0,1); its threads run on any of those")
    assert fake.set == {}


def test_a_refused_affinity_is_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeScheduler(monkeypatch, {0, 1}, ["10"], refuse=errno.EPERM)
    assert limits.confine_to_cpus(None, single=True) == (
        "cannot keep the serving threads on CPUs 1: Operation not permitted")


def test_the_current_cpu_is_read_from_proc_and_must_be_allowed() -> None:
    here = limits._current_cpu(os.sched_getaffinity(0))
    assert here in os.sched_getaffinity(0)
    assert limits._current_cpu({10_000}) == 10_000  # not allowed: the lowest allowed one
