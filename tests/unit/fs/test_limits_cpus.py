"""`limits.confine_to_cpus` and `cpu_policy.AdaptiveCpus`: which CPUs every thread of the
serving process gets, with the scheduler faked (a unit test must not move its own
process)."""

from __future__ import annotations

import errno
import os
import time

import pytest

from pycvmfs.fs import cpu_policy, limits
from pycvmfs.fs.cpu_policy import AdaptiveCpus, serving_cpus


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
        monkeypatch.setattr(limits, "current_cpu", lambda allowed: current)

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
    allowed = frozenset(os.sched_getaffinity(0))
    assert limits.allowed_cpus() == allowed
    assert limits.current_cpu(allowed) in allowed
    assert limits.current_cpu(frozenset({10_000})) == 10_000  # not allowed: the lowest one


class Moves:
    def __init__(self, problem: str | None = None) -> None:
        self.calls: list[frozenset[int]] = []
        self.problem = problem

    def __call__(self, cpus: frozenset[int]) -> str | None:
        self.calls.append(cpus)
        return self.problem


def _requests(policy: AdaptiveCpus, count: int, *, parallel: bool) -> None:
    """`count` requests, each arriving while another caller's runs or one at a time."""
    for _ in range(count):
        if parallel:
            policy.enter(101)
            policy.enter(102)
            policy.leave()
            policy.leave()
        else:
            policy.enter(101)
            policy.leave()


def test_parallel_requests_bring_every_thread_to_one_cpu_and_single_ones_back() -> None:
    moves = Moves()
    policy = AdaptiveCpus(frozenset({0, 1, 2}), move=moves, here=lambda allowed: 2)
    _requests(policy, 100, parallel=False)
    policy.review()
    assert moves.calls == [] and not policy.pinned
    _requests(policy, 100, parallel=True)  # half of the arrivals find another running
    policy.review()
    assert moves.calls == [frozenset({2})] and policy.pinned
    _requests(policy, 100, parallel=True)
    policy.review()  # pinned already: nothing to do
    _requests(policy, 100, parallel=False)
    policy.review()
    assert moves.calls[-1] == frozenset({0, 1, 2}) and not policy.pinned
    _requests(policy, 20, parallel=True)
    policy.review()  # too few requests to bring them to one CPU
    assert len(moves.calls) == 2 and not policy.pinned
    _requests(policy, 100, parallel=True)
    policy.review()
    _requests(policy, 20, parallel=True)
    policy.review()  # too few to gain from one CPU (a big read counts few): back to all
    assert len(moves.calls) == 4 and not policy.pinned


def test_one_caller_s_next_request_before_the_last_callback_returned_is_not_crowded(
        ) -> None:
    """A serving thread that loses the CPU after its reply is still in its callback when
    the same caller's next request arrives (a loaded machine): one caller, not parallel."""
    policy = AdaptiveCpus(frozenset({0, 1}), move=Moves(), here=lambda allowed: 0)
    policy.enter(101)
    for _ in range(100):
        policy.enter(101)  # replied to, but the callback has not returned yet
        policy.leave()
    policy.leave()
    assert (policy.arrivals, policy.crowded, policy.active) == (101, 0, 0)


def test_a_mixed_interval_keeps_the_threads_where_they_are() -> None:
    moves = Moves()
    policy = AdaptiveCpus(frozenset({0, 1}), move=moves, here=lambda allowed: 0)
    _requests(policy, 90, parallel=False)
    _requests(policy, 10, parallel=True)  # 10 of 110 arrivals crowded: neither threshold
    policy.review()
    assert moves.calls == [] and not policy.pinned


def test_a_refused_move_is_logged_once_and_ends_the_reviews(caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    policy = AdaptiveCpus(frozenset({0, 1}), move=Moves("cannot keep: no"),
                          here=lambda allowed: 0)
    _requests(policy, 100, parallel=True)
    policy.review()
    assert not policy.pinned and "cannot keep: no; the serving threads stay" in caplog.text
    assert policy._stop.is_set()


def test_a_request_going_on_in_the_pool_is_running_not_arriving() -> None:
    policy = AdaptiveCpus(frozenset({0, 1}), move=Moves(), here=lambda allowed: 0)
    policy.enter(101)
    policy.resume()  # handed to the pool before the worker's part ended
    policy.leave()
    policy.leave()
    assert (policy.arrivals, policy.crowded, policy.active) == (1, 0, 0)


def test_one_cpu_allowed_or_a_lost_update_changes_nothing() -> None:
    moves = Moves()
    policy = AdaptiveCpus(frozenset({3}), move=moves, here=lambda allowed: 3)
    _requests(policy, 100, parallel=True)
    policy.leave()  # a lost increment: active below zero
    policy.review()
    assert moves.calls == [] and policy.active == 0


def test_the_review_thread_starts_and_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_policy, "REVIEW_S", 0.01)
    moves = Moves()
    policy = AdaptiveCpus(frozenset({0, 1}), move=moves, here=lambda allowed: 1)
    policy.start()
    try:
        _requests(policy, 100, parallel=True)
        deadline = time.monotonic() + 5
        while not policy.pinned and time.monotonic() < deadline:
            time.sleep(0.01)
        assert policy.pinned and moves.calls == [frozenset({1})]
    finally:
        policy.stop()


def test_serving_cpus_places_the_threads_and_hands_out_the_policy_that_moves_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeScheduler(monkeypatch, {0, 1}, ["10"], current=1)
    policy, problem = serving_cpus(None, "adaptive")
    assert isinstance(policy, AdaptiveCpus) and problem is None and fake.set == {}
    assert serving_cpus(None, "all") == (None, None) and fake.set == {}
    assert serving_cpus(frozenset({0}), "adaptive") == (None, None)  # a list holds them
    assert fake.set == {10: {0}}
    assert serving_cpus(None, "one") == (None, None) and fake.set == {10: {1}}
    policy, problem = serving_cpus(frozenset({7}), "adaptive")
    assert policy is None and problem is not None and "CVMFS_CPU_AFFINITY=7" in problem
    FakeScheduler(monkeypatch, {3}, ["10"])
    assert serving_cpus(None, "adaptive") == (None, None)  # one CPU: nothing to decide
