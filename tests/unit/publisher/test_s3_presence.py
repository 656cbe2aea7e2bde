"""s3_presence: listings of data/XX/ answer "is it stored?" where they cover the key,
page by page as questions come, and never claim a key the listing did not show."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from pycvmfs.publisher.s3_presence import ObjectPresence


class Bucket:
    """Sorted keys served in pages of `page_size`; counts the pages served."""

    def __init__(self, keys: list[str], page_size: int = 3) -> None:
        self.keys = sorted(keys)
        self.page_size = page_size
        self.requests: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()

    def list_page(self, prefix: str, token: str | None) -> tuple[list[str], str | None]:
        with self.lock:
            self.requests.append((prefix, token))
        below = [k for k in self.keys if k.startswith(prefix)]
        start = int(token or 0)
        end = start + self.page_size
        return below[start:end], (str(end) if end < len(below) else None)


def _keys(fanout: str, count: int) -> list[str]:
    return [f"data/{fanout}/{n:038x}" for n in range(0, 2 * count, 2)]  # even names stored


def test_a_small_fanout_is_listed_once_and_answers_present_and_absent() -> None:
    bucket = Bucket(_keys("ab", 2) + _keys("cd", 5))
    presence = ObjectPresence(bucket.list_page)
    assert presence.known(f"data/ab/{0:038x}") is True
    assert presence.known(f"data/ab/{1:038x}") is False  # listed whole: absent
    assert presence.known(f"data/ab/{2:038x}") is True
    assert bucket.requests == [("data/ab/", None)]
    assert presence.known(f"data/ef/{0:038x}") is False  # an empty fanout: one request
    assert len(bucket.requests) == 2


def test_a_big_fanout_is_listed_a_page_per_questions_and_partly_answers() -> None:
    bucket = Bucket(_keys("ab", 30), page_size=3)  # 10 pages
    presence = ObjectPresence(bucket.list_page, questions_per_page=4)
    last = f"data/ab/{58:038x}"
    assert presence.known(last) is None  # one page read; it does not reach that far
    assert presence.known(f"data/ab/{2:038x}") is True  # within the first page
    assert presence.known(f"data/ab/{3:038x}") is False  # below the last listed key
    assert len(bucket.requests) == 1
    assert presence.known(last) is None
    assert len(bucket.requests) == 1
    presence.known(last)  # the fifth question earns a second page
    assert len(bucket.requests) == 2 and presence.pages_listed == 2
    for _ in range(100):
        answer = presence.known(last)
    assert answer is True and len(bucket.requests) == 10  # never more pages than there are


def test_a_forgotten_key_is_absent_and_other_keys_are_not_asked_about() -> None:
    bucket = Bucket(_keys("ab", 2))
    presence = ObjectPresence(bucket.list_page)
    key = f"data/ab/{0:038x}"
    assert presence.known(key) is True
    presence.forget(key)
    assert presence.known(key) is False
    presence.forget("data/zz/never-asked")  # nothing to forget
    for other in (".cvmfspublished", "data/txn/x", "data/ab", "data/ab/", "data/ab/c/d"):
        assert presence.known(other) is None
    assert len(bucket.requests) == 1


def test_threads_asking_about_one_fanout_list_it_once() -> None:
    bucket = Bucket(_keys("ab", 3))
    presence = ObjectPresence(bucket.list_page)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(presence.known, [f"data/ab/{n:038x}" for n in range(6)] * 5))
    assert answers == [True, False, True, False, True, False] * 5
    assert len(bucket.requests) == 1


def test_reset_lists_again() -> None:
    bucket = Bucket(_keys("ab", 1))
    presence = ObjectPresence(bucket.list_page)
    key = f"data/ab/{2:038x}"
    assert presence.known(key) is False
    bucket.keys.append(key)
    assert presence.known(key) is False  # the listing is as old as it is
    presence.reset()
    assert presence.known(key) is True and len(bucket.requests) == 2
