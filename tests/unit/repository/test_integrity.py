"""`report_once`: each integrity problem is logged once, however often a client asks for the
broken path; the memory of what was reported is bounded (least recently seen forgotten
first) and safe from many threads."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

import pytest

from pycvmfs.repository import integrity
from pycvmfs.repository.integrity import report_once


@pytest.fixture(autouse=True)
def fresh_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with nothing reported (other tests' problems stay theirs)."""
    monkeypatch.setattr(integrity, "_seen", OrderedDict())


def _logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pycvmfs.integrity"]


def test_a_problem_is_logged_once_as_an_error(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="pycvmfs.integrity"):
        assert report_once("catalog X: entry 'a/b' refused")
        assert not report_once("catalog X: entry 'a/b' refused")
        assert report_once("catalog X: entry 'c/d' refused")
    assert _logged(caplog) == ["integrity: catalog X: entry 'a/b' refused",
                               "integrity: catalog X: entry 'c/d' refused"]
    assert all(r.levelno == logging.ERROR for r in caplog.records)


def test_the_memory_is_bounded_and_forgets_the_least_recently_seen(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(integrity, "REMEMBERED_PROBLEMS", 3)
    for name in ("a", "b", "c"):
        assert report_once(name)
    assert not report_once("a")  # seen again: now the most recent
    assert report_once("d")  # four: "b" (least recently seen) is forgotten
    assert len(integrity._seen) == 3
    assert not report_once("a") and not report_once("c") and not report_once("d")
    assert report_once("b")  # forgotten, so logged again


def test_many_threads_log_one_problem_once(caplog: pytest.LogCaptureFixture) -> None:
    barrier = threading.Barrier(8)
    results: list[bool] = []

    def report() -> None:
        barrier.wait(timeout=5)
        for _ in range(50):
            results.append(report_once("the same problem"))

    with caplog.at_level(logging.ERROR, logger="pycvmfs.integrity"):
        threads = [threading.Thread(target=report) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
    assert results.count(True) == 1 and len(results) == 400
    assert _logged(caplog) == ["integrity: the same problem"]
