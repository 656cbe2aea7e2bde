"""The publish lock of an S3 storage: an object created with a conditional write.

`.cvmfs_publish.lock` holds its owner (host, pid, start time), a random token and a lease
end. Taking it: read it; a live holder refuses at once with one line naming it; a stale
one (lease over, or held by a process of this host that no longer runs) is removed. Then
the object is created with `If-None-Match: *`, which fails when another publisher was
quicker, and read back: only our token there means we hold it (this also catches a
server that ignores the condition and let the last writer win). A thread renews the
lease while the lock is held; releasing deletes the object if it is still ours. A
publisher killed outright leaves the object behind until its lease ends, or until the
next publish on the same host sees that its pid is gone.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Protocol

from pycvmfs.errors import LockError

LEASE_SECONDS = 600.0
RENEW_SECONDS = 60.0


class LockObjects(Protocol):
    """The three operations the lock needs from the bucket."""

    def read_file(self, relative: str) -> bytes | None: ...

    def create_file(self, relative: str, data: bytes) -> bool:
        """Create unless it exists (conditional write); False when it existed."""
        ...

    def replace_file(self, relative: str, data: bytes) -> None: ...

    def delete_file(self, relative: str) -> None: ...


@dataclass(frozen=True, slots=True)
class LockOwner:
    host: str
    pid: int
    since: float
    lease_until: float
    token: str

    def describe(self) -> str:
        return (f"host {self.host}, pid {self.pid}, since {_when(self.since)}, "
                f"lease until {_when(self.lease_until)}")

    def stale(self, now: float, host: str, alive: Callable[[int], bool]) -> bool:
        return self.lease_until < now or (self.host == host and not alive(self.pid))

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> LockOwner | None:
        try:
            fields = json.loads(data)
            return cls(str(fields["host"]), int(fields["pid"]), float(fields["since"]),
                       float(fields["lease_until"]), str(fields["token"]))
        except (ValueError, KeyError, TypeError):
            return None


class S3PublishLock:
    """Context manager holding the lock object `name` of `objects` at `location`."""

    def __init__(self, objects: LockObjects, name: str, location: str, *,
                 lease: float = LEASE_SECONDS, renew: float = RENEW_SECONDS,
                 clock: Callable[[], float] = time.time,
                 host: str | None = None,
                 alive: Callable[[int], bool] | None = None) -> None:
        self._objects = objects
        self._name = name
        self._location = location
        self._lease = lease
        self._renew = renew
        self._clock = clock
        self._host = host or socket.gethostname()
        self._alive = alive or _pid_alive
        self._owner: LockOwner | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.broke: LockOwner | None = None  # the stale holder removed on the way in

    def __enter__(self) -> S3PublishLock:
        now = self._clock()
        current = self._objects.read_file(self._name)
        if current is not None:
            holder = LockOwner.decode(current)
            if holder is not None and not holder.stale(now, self._host, self._alive):
                raise self._held(holder)
            self._objects.delete_file(self._name)  # stale or unreadable: a dead publisher's
            self.broke = holder
        mine = LockOwner(self._host, os.getpid(), now, now + self._lease, uuid.uuid4().hex)
        if not self._objects.create_file(self._name, mine.encode()):
            raise self._held(self._holder())
        found = self._holder()
        if found is None or found.token != mine.token:
            raise self._held(found)  # the server let another publisher's write win
        self._owner = mine
        self._stop.clear()
        self._renewer = threading.Thread(target=self._keep, name="s3-lock-lease", daemon=True)
        self._renewer.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        owner, self._owner = self._owner, None
        if owner is not None:
            found = self._holder()
            if found is not None and found.token == owner.token:
                self._objects.delete_file(self._name)

    def renew(self) -> None:
        """Move the lease end on, if the lock is still ours."""
        owner = self._owner
        if owner is None:
            return
        found = self._holder()
        if found is None or found.token != owner.token:
            return
        renewed = LockOwner(owner.host, owner.pid, owner.since,
                            self._clock() + self._lease, owner.token)
        self._objects.replace_file(self._name, renewed.encode())
        self._owner = renewed

    def _keep(self) -> None:
        while not self._stop.wait(self._renew):
            try:
                self.renew()
            except Exception:  # a failed renewal is retried; the lease covers several
                continue

    def _holder(self) -> LockOwner | None:
        data = self._objects.read_file(self._name)
        return LockOwner.decode(data) if data is not None else None

    def _held(self, holder: LockOwner | None) -> LockError:
        lock = f"{self._location}/{self._name}"
        who = f" ({holder.describe()})" if holder is not None else ""
        until = f"its lease ends at {_when(holder.lease_until)}" if holder else \
            "it has no readable owner"
        return LockError(f"storage {self._location} is locked by another publisher{who}; try "
                         f"again when it has finished, or if it is gone delete {lock} "
                         f"({until})")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
