"""Leak checks for every test: threads, file descriptors, mounts and environment variables.

A test fails (an error at teardown) when, after its teardown, something it started is still
there: a Python thread (daemon or not) still alive, a descriptor still open, a mount still
mounted under a temporary directory this session made, or `os.environ` not restored. Threads
and descriptors that are finishing get a short bounded grace (`GRACE_S`).

What a module-, class- or session-scoped fixture sets up is not the test's: each such
fixture's setup is snapshotted around, and what it created is owned by it until pytest
finalizes it, when it must be gone. So are the directories its setup made (`mktemp`,
`tempfile.mkdtemp`) with the files opened and the mounts made there (a repository's catalogs
opened as a test walks it, a mount made by a module's first test), the threads that run for
an object its own threads run for, with the sockets they were handed (a server's handlers of
keep-alive connections), and the sockets its value holds (a client's connection pool).
A test that must leave something behind says why with `@pytest.mark.allow_leaks("reason")`.

Descriptors on files of installed libraries are theirs to cache for the whole process
(matplotlib keeps the font files it rendered with open), and so are daemon threads that run
an installed library's code (trio keeps idle worker threads for a while): not a test's leak.

Mounts are attributed by path (this process's basetemp and the directories `tempfile.mkdtemp`
made in it), not by "any new FUSE mount": other test runs on the same machine share the mount
namespace, and their mounts are not this test's.
"""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import sys
import sysconfig
import tempfile
import threading
import time
import types
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

GRACE_S = 3.0
LIBRARY_DIRS = tuple(sorted({sysconfig.get_paths()[key] + os.sep
                             for key in ("purelib", "platlib", "stdlib", "platstdlib")}))
SITE_DIRS = tuple(sorted({sysconfig.get_paths()[key] + os.sep for key in ("purelib", "platlib")}))
POLL_S = 0.02
MARKER = "allow_leaks"


def _fds() -> frozenset[tuple[int, str]]:
    """Open descriptors as (number, what it points at), so a reused number is told apart."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the directory's own descriptor, closed by now
            continue
        if not target.startswith(LIBRARY_DIRS):
            found.add((int(name), target))
    return frozenset(found)


def _unescape(path: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    for code in ("\\040", "\\011", "\\012", "\\134"):
        path = path.replace(code, chr(int(code[1:], 8)))
    return path


def _mounts() -> frozenset[tuple[str, str, str]]:
    """Mounts as (mount id, mount point, filesystem type)."""
    found = set()
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields = line.split()
            separator = fields.index("-")
            found.add((fields[0], _unescape(fields[4]), fields[separator + 1]))
    return frozenset(found)


def _library_pool(thread: threading.Thread) -> bool:
    """A daemon thread running an installed (site-packages) library's code."""
    target = getattr(thread, "_target", None)
    module = sys.modules.get(getattr(target, "__module__", None) or "")
    return thread.daemon and str(getattr(module, "__file__", "")).startswith(SITE_DIRS)


def _threads() -> frozenset[threading.Thread]:
    # a _DummyThread stands for a thread started outside `threading` (libfuse's, say): it
    # never reports its end, so it cannot be checked here (the mount check covers FUSE)
    return frozenset(t for t in threading.enumerate()
                     if t.is_alive() and not isinstance(t, threading._DummyThread)
                     and not _library_pool(t))


def _runs_for(thread: threading.Thread) -> object | None:
    """The object whose method the thread runs (a server for its serving and handler
    threads), if any."""
    return getattr(getattr(thread, "_target", None), "__self__", None)


def _handed_sockets(threads: Iterable[threading.Thread]) -> set[tuple[int, str]]:
    """The descriptors of the sockets the threads were started with (a handler's request)."""
    found = set()
    for thread in threads:
        for arg in getattr(thread, "_args", ()):
            if isinstance(arg, socket.socket) and arg.fileno() >= 0:
                with contextlib.suppress(OSError):
                    found.add((arg.fileno(), os.readlink(f"/proc/self/fd/{arg.fileno()}")))
    return found


def _pooled_sockets(values: list[object], limit: int = 50_000) -> set[tuple[int, str]]:
    """Descriptors of the sockets that fixture values hold, however deep (a client's
    connection pool opens its connections when first used); a bounded walk."""
    found: set[tuple[int, str]] = set()
    seen: set[int] = set()
    stack = list(values)
    while stack and len(seen) < limit:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _NOT_HOLDERS):
            continue
        seen.add(id(obj))
        if isinstance(obj, socket.socket):
            with contextlib.suppress(OSError):
                found.add((obj.fileno(), os.readlink(f"/proc/self/fd/{obj.fileno()}")))
        stack.extend(gc.get_referents(obj))
    return found


_NOT_HOLDERS = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType,
                types.CodeType, str, bytes, int, float)


@dataclass(frozen=True)
class Snapshot:
    threads: frozenset[threading.Thread]
    fds: frozenset[tuple[int, str]]
    mounts: frozenset[tuple[str, str, str]]
    env: dict[str, str]

    @classmethod
    def take(cls) -> Snapshot:
        return cls(_threads(), _fds(), _mounts(), dict(os.environ))


@dataclass
class Owned:
    """What a longer-scoped fixture created and still holds (or the union of them all)."""

    name: str = ""
    threads: set[threading.Thread] = field(default_factory=set)
    fds: set[tuple[int, str]] = field(default_factory=set)
    mounts: set[tuple[str, str, str]] = field(default_factory=set)
    env: dict[str, str | None] = field(default_factory=dict)  # changed key -> value before
    roots: list[str] = field(default_factory=list)  # directories its setup made
    serves: dict[int, object] = field(default_factory=dict)  # objects its threads run for
    values: list[object] = field(default_factory=list)  # what it gave the tests


# pytest sets this one around every phase itself (a fixture's teardown that fails leaves it
# naming that phase): never a test's change
PYTEST_OWN = frozenset({"PYTEST_CURRENT_TEST"})


def _env_changes(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {key for key in before.keys() | after.keys()
            if before.get(key) != after.get(key) and key not in PYTEST_OWN}


class LeakChecker:
    """The pytest plugin (registered by tests/conftest.py)."""

    def __init__(self) -> None:
        self._before: dict[str, Snapshot] = {}
        self._owned: dict[int, Owned] = {}  # id(fixturedef) -> what its setup created
        self._finalized: list[Owned] = []  # to check at the end of the current teardown
        self._tmp_roots: list[str] = []
        self._basetemp: str | None = None

    # -- where this session's mounts may be ------------------------------------------------

    def track_mkdtemp(self) -> Callable[[], None]:
        """Record every directory `tempfile.mkdtemp` (and TemporaryDirectory) makes;
        returns the undo."""
        original = tempfile.mkdtemp
        roots = self._tmp_roots

        def mkdtemp(*args: Any, **kwargs: Any) -> Any:
            made = original(*args, **kwargs)
            roots.append(os.path.abspath(os.fsdecode(made)))
            return made

        tempfile.mkdtemp = mkdtemp  # type: ignore[assignment]

        def undo() -> None:
            tempfile.mkdtemp = original

        return undo

    def add_tmp_root(self, path: Path) -> None:
        """This session's basetemp: where `tmp_path_factory.mktemp` makes directories."""
        self._basetemp = str(path.resolve())
        self._tmp_roots.append(self._basetemp)

    def _basetemp_children(self) -> set[str]:
        if self._basetemp is None:
            return set()
        return {os.path.join(self._basetemp, name) for name in os.listdir(self._basetemp)}

    def _ours(self, mountpoint: str) -> bool:
        return _under(mountpoint, self._tmp_roots)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """What exists once the tests are collected lives for the session: kept out of the
        garbage collector's sight, the collection a grace may run (a descriptor only the
        collector closes counts as closed) scans what the tests made, not every module."""
        gc.collect()
        gc.freeze()

    # -- fixtures that outlive a test --------------------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef: pytest.FixtureDef[Any],
                             request: pytest.FixtureRequest) -> Generator[None, Any, Any]:
        if fixturedef.scope == "function":
            return (yield)
        before, made = Snapshot.take(), len(self._tmp_roots)
        children = self._basetemp_children()
        value = None
        try:
            value = yield
            return value
        finally:
            after = Snapshot.take()
            threads = after.threads - before.threads
            serves = {id(obj): obj for obj in map(_runs_for, threads) if obj is not None}
            self._owned[id(fixturedef)] = Owned(
                f"{fixturedef.scope}-scoped fixture {fixturedef.argname!r}",
                set(threads), set(after.fds - before.fds),
                {m for m in after.mounts - before.mounts if self._ours(m[1])},
                {key: before.env.get(key) for key in _env_changes(before.env, after.env)},
                [*self._tmp_roots[made:], *(self._basetemp_children() - children)],
                serves, [value])

    def pytest_fixture_post_finalizer(self, fixturedef: pytest.FixtureDef[Any]) -> None:
        owned = self._owned.pop(id(fixturedef), None)
        if owned is not None:
            self._finalized.append(owned)

    def _all_owned(self) -> Owned:
        union = Owned()
        for owned in self._owned.values():
            union.threads |= owned.threads
            union.fds |= owned.fds
            union.mounts |= owned.mounts
            union.env.update(owned.env)
            union.roots += owned.roots
            union.serves.update(owned.serves)
            union.values += owned.values
        return union

    # -- the test ----------------------------------------------------------------------------

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        self._before[item.nodeid] = Snapshot.take()
        return (yield)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item,
                                nextitem: pytest.Item | None) -> Generator[None, None, None]:
        result = yield
        before = self._before.pop(item.nodeid, None)
        finalized, self._finalized = self._finalized, []
        problems = [] if before is None else self._leaks(before)
        for owned in finalized:  # a longer-scoped fixture must give back what it took
            problems += [f"{owned.name}: {problem}" for problem in self._left_behind(owned)]
        if problems:
            if before is not None:
                self._restore_env(before.env)
            marker = item.get_closest_marker(MARKER)
            if marker is None:
                raise pytest.fail.Exception(
                    f"{item.nodeid} leaked (tests/leak_checks.py; opt out with "
                    f"@pytest.mark.{MARKER}(reason)):\n  " + "\n  ".join(problems),
                    pytrace=False)
        return result

    def _leaks(self, before: Snapshot) -> list[str]:
        deadline = time.monotonic() + GRACE_S
        generations = [1, 2]  # the young ones first: cheap, and usually enough
        while True:
            owned = self._all_owned()
            now = Snapshot.take()
            threads = now.threads - before.threads - owned.threads
            serving = {t for t in threads if id(_runs_for(t)) in owned.serves}
            threads -= serving  # a handler of a fixture's server, with the socket it was handed
            fds = {(fd, target) for fd, target in now.fds - before.fds - owned.fds
                   - _handed_sockets(serving) if not _under(target, owned.roots)}
            mounts = {m for m in now.mounts - before.mounts - owned.mounts
                      if self._ours(m[1]) and not _under(m[1], owned.roots)}
            env = _env_changes(before.env, now.env) - owned.env.keys()
            if fds and any(target.startswith("socket:") for _, target in fds):
                fds -= _pooled_sockets(owned.values)  # a fixture's client keeps connections
            if not (threads or fds or mounts) or time.monotonic() >= deadline:
                break
            if fds and generations:  # an unreferenced file object closes when collected
                gc.collect(generations.pop(0))
                continue
            for thread in threads:
                thread.join(min(POLL_S, max(0.0, deadline - time.monotonic())))
            if not threads:
                time.sleep(POLL_S)
        return _describe(threads, fds, mounts, env, before.env, now.env)

    def _left_behind(self, owned: Owned) -> list[str]:
        """What a finalized fixture still holds, after the same grace as a test."""
        deadline = time.monotonic() + GRACE_S
        while True:
            now = Snapshot.take()
            threads = (owned.threads & now.threads) | {
                t for t in now.threads if id(_runs_for(t)) in owned.serves}
            fds = (owned.fds & now.fds) | {
                (fd, target) for fd, target in now.fds if _under(target, owned.roots)}
            mounts = (owned.mounts & now.mounts) | {m for m in now.mounts
                                                    if _under(m[1], owned.roots)}
            env = {key for key, value in owned.env.items() if now.env.get(key) != value}
            if not (threads or fds or mounts) or time.monotonic() >= deadline:
                break
            gc.collect()
            for thread in threads:
                thread.join(min(POLL_S, max(0.0, deadline - time.monotonic())))
            if not threads:
                time.sleep(POLL_S)
        if env:
            self._restore_env({key: value for key, value in owned.env.items()
                               if value is not None}, keys=env)
        return _describe(threads, fds, mounts, env, owned.env, now.env)

    @staticmethod
    def _restore_env(before: dict[str, str | None], keys: Iterable[str] | None = None) -> None:
        """Put the environment back so one leak does not fail every later test."""
        for key in (_env_changes({k: v for k, v in before.items() if v is not None},
                                 dict(os.environ)) if keys is None else keys):
            value = before.get(key)
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _under(path: str, roots: Iterable[str]) -> bool:
    return any(path == root or path.startswith(root + os.sep) for root in roots)


def _describe(threads: Iterable[threading.Thread], fds: Iterable[tuple[int, str]],
              mounts: Iterable[tuple[str, str, str]], env: Iterable[str],
              env_before: Mapping[str, str | None], env_after: Mapping[str, str]) -> list[str]:
    problems = [f"thread {t.name!r} ({'daemon' if t.daemon else 'non-daemon'}, "
                f"target {getattr(t, '_target', None)!r}) still alive" for t in threads]
    problems += [f"descriptor {fd} -> {target} still open" for fd, target in sorted(fds)]
    problems += [f"{fstype} mount on {point} still mounted" for _, point, fstype in mounts]
    problems += [f"environment variable {key}: {env_before.get(key)!r} -> "
                 f"{env_after.get(key)!r} not restored" for key in sorted(env)]
    return problems
