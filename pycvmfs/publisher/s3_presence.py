"""Which objects a bucket holds, learnt by listing `data/XX/` rather than asking one by one.

A HEAD per object is a request and some milliseconds of client CPU; an unchanged republish
or an incremental snapshot asks about every object of the revision. S3 lists keys in
order, so a listing of `data/XX/` read up to key K answers for every key up to K: present
if listed, absent if not. Each fanout directory is listed when it is first asked about,
one page at a time: one page at the first question and one more for every
QUESTIONS_PER_PAGE questions after it. A repository of up to about a quarter million
objects (1,000 keys per page, 256 fanouts) is so answered with one listing request per
fanout; a small publish into a huge one never lists it whole, and the listing costs at
most about one page per QUESTIONS_PER_PAGE HEADs it replaces.

An answer is as good as the moment of its listing. The storage's users (publish, gc,
snapshot) hold its lock, so nobody else deletes meanwhile; objects stored later are
remembered by the storage itself, and deleted ones are forgotten here. An "absent" that
is wrong (a gateway that lists out of order) costs only an upload that `If-None-Match: *`
turns into nothing; "present" is only ever said of a key the bucket listed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

QUESTIONS_PER_PAGE = 8
FANOUT_PREFIX_LENGTH = len("data/00/")

# (prefix, continuation token) -> (keys relative to the storage in order, next token)
ListPage = Callable[[str, str | None], tuple[list[str], str | None]]


@dataclass
class _Fanout:
    lock: threading.Lock = field(default_factory=threading.Lock)
    questions: int = 0
    pages: int = 0
    keys: set[str] = field(default_factory=set)
    listed_up_to: str = ""  # every key up to this one was listed
    token: str | None = None
    complete: bool = False


class ObjectPresence:
    """Answers "is this object stored?" from listings where they cover the key."""

    def __init__(self, list_page: ListPage, questions_per_page: int = QUESTIONS_PER_PAGE
                 ) -> None:
        self._list_page = list_page
        self._questions_per_page = questions_per_page
        self._lock = threading.Lock()
        self._fanouts: dict[str, _Fanout] = {}
        self.pages_listed = 0  # listing requests made (tests and benchmarks read it)

    def known(self, relative: str) -> bool | None:
        """True (listed), False (the listing covers it and it is not there), None (ask)."""
        fanout = self._fanout(relative)
        if fanout is None:
            return None
        with fanout.lock:
            fanout.questions += 1
            allowed = 1 + (fanout.questions - 1) // self._questions_per_page
            while (not fanout.complete and relative > fanout.listed_up_to
                   and fanout.pages < allowed):
                self._read_page(relative[:FANOUT_PREFIX_LENGTH], fanout)
            if relative in fanout.keys:
                return True
            if fanout.complete or relative <= fanout.listed_up_to:
                return False
            return None

    def reset(self) -> None:
        """Forget every listing (the lock was taken anew: anything may have changed)."""
        with self._lock:
            self._fanouts.clear()

    def forget(self, relative: str) -> None:
        """`relative` was deleted."""
        fanout = self._fanout(relative, create=False)
        if fanout is not None:
            with fanout.lock:
                fanout.keys.discard(relative)

    def _read_page(self, prefix: str, fanout: _Fanout) -> None:
        keys, token = self._list_page(prefix, fanout.token)
        fanout.pages += 1
        with self._lock:
            self.pages_listed += 1
        fanout.keys.update(keys)
        if keys:
            fanout.listed_up_to = max(fanout.listed_up_to, keys[-1])
        fanout.token = token
        fanout.complete = token is None

    def _fanout(self, relative: str, *, create: bool = True) -> _Fanout | None:
        """The state of `relative`'s data/XX/ directory; None for keys outside data/."""
        prefix = relative[:FANOUT_PREFIX_LENGTH]
        if (len(relative) <= FANOUT_PREFIX_LENGTH or not prefix.startswith("data/")
                or prefix[-1] != "/" or "/" in relative[FANOUT_PREFIX_LENGTH:]):
            return None
        with self._lock:
            fanout = self._fanouts.get(prefix)
            if fanout is None and create:
                fanout = self._fanouts[prefix] = _Fanout()
            return fanout
