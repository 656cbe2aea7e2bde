"""Fixtures shared by all tests, the leak checks every test runs under
(tests/leak_checks.py), and the check that no test writes where an installed CernVM-FS
client lives (`SHARED_PLACES`)."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from pycvmfs.config import CONFIG_ROOT_ENV
from tests.leak_checks import LeakChecker
from tests.publish_helpers import FQRN, Keys

# The reference client's configuration root and root's default cache base: a test that
# creates or changes anything there fails (tests write only into temporary directories).
SHARED_PLACES = (Path("/etc/cvmfs"), Path("/var/lib/cvmfs"))
MAX_ENTRIES = 100_000  # a walk of a shared place stops there (it is only compared)
LIVE_CLIENT = "unless a CernVM-FS client running on this machine changed it meanwhile"

_LEAKS = LeakChecker()
_undo: list[Callable[[], None]] = []


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Modules and shared groups as units of work for `--dist loadscope` (tests/xdist_groups.py)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from tests.xdist_groups import ModuleGroupScheduling

    return ModuleGroupScheduling(config, log)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_LEAKS, "pycvmfs-leak-checks")
    _undo.append(_LEAKS.track_mkdtemp())
    _undo.append(_deliver_sigint_to_children())
    _undo.append(_isolate_configuration())


def _isolate_configuration() -> Callable[[], None]:
    """Every pycvmfs a test runs, in this process or as a child that inherits the
    environment, reads its configuration from a scratch root whose default.local puts the
    cache in a scratch directory: not /etc/cvmfs, and not /var/lib/cvmfs (root's default
    cache base). A test that makes its own configuration root sets its own CVMFS_CACHE_BASE.
    Set before the first test: the leak checks see it as the environment every test
    starts from."""
    scratch = Path(tempfile.mkdtemp(prefix="pycvmfs-tests-"))
    (scratch / "etc-cvmfs").mkdir()
    (scratch / "etc-cvmfs" / "default.local").write_text(
        f"CVMFS_CACHE_BASE={scratch / 'cvmfs-cache'}\n")
    saved = os.environ.get(CONFIG_ROOT_ENV)
    os.environ[CONFIG_ROOT_ENV] = str(scratch / "etc-cvmfs")

    def undo() -> None:
        if saved is None:
            os.environ.pop(CONFIG_ROOT_ENV, None)
        else:
            os.environ[CONFIG_ROOT_ENV] = saved
        shutil.rmtree(scratch, ignore_errors=True)

    return undo


def _deliver_sigint_to_children() -> Callable[[], None]:
    """A suite started in the background of a non-interactive shell inherits SIGINT
    ignored, and so would every process a test starts (exec keeps an ignored signal):
    tests that stop a service or a publish with SIGINT would wait for nothing. A handled
    SIGINT here becomes the default one in children."""
    if signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
        return lambda: None
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)


def pytest_unconfigure(config: pytest.Config) -> None:
    while _undo:
        _undo.pop()()


@pytest.fixture(scope="session", autouse=True)
def _leak_checked_tmp_root(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Mounts left under this session's basetemp are leaks."""
    _LEAKS.add_tmp_root(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    """One repository key set per test session (RSA key generation is slow-ish)."""
    from pycvmfs.publisher.keys import create_keys

    keys_dir: Path = tmp_path_factory.mktemp("keys")
    create_keys(FQRN, keys_dir)
    return Keys(FQRN, keys_dir)


def _walk(place: Path) -> dict[str, tuple[int, int, int]] | None:
    """None if `place` does not exist; else every entry under it (itself as "."), by
    relative path: (mode, size, mtime in ns)."""
    try:
        st = place.lstat()
    except FileNotFoundError:
        return None
    entries = {".": (st.st_mode, st.st_size, st.st_mtime_ns)}
    for directory, dirs, files in os.walk(place, onerror=lambda error: None):
        for name in dirs + files:
            path = os.path.join(directory, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            entries[os.path.relpath(path, place)] = (st.st_mode, st.st_size, st.st_mtime_ns)
            if len(entries) >= MAX_ENTRIES:
                return entries
    return entries


def _top(place: Path) -> dict[str, int] | None:
    """What a test changes cheaply seen: `place` and its direct entries, by mtime."""
    try:
        entries = {".": place.lstat().st_mtime_ns}
        with os.scandir(place) as listing:
            for entry in listing:
                entries[entry.name] = entry.stat(follow_symlinks=False).st_mtime_ns
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        pass
    return entries


def _changes(place: Path, before: Mapping[str, object] | None, after: Mapping[str, object] | None,
             ) -> str | None:
    if before == after:
        return None
    if before is None:
        return f"{place} was created"
    if after is None:
        return f"{place} was removed"
    changed = sorted(name for name in before.keys() | after.keys()
                     if before.get(name) != after.get(name))
    shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
    return f"{place} changed: {shown}"


@pytest.fixture(scope="session", autouse=True)
def _shared_places_untouched() -> Iterator[None]:
    """The whole run leaves SHARED_PLACES as it found them (every entry, deep)."""
    before = {place: _walk(place) for place in SHARED_PLACES}
    yield
    problems = [problem for place in SHARED_PLACES
                if (problem := _changes(place, before[place], _walk(place))) is not None]
    if problems:
        pytest.fail("the tests wrote outside their temporary directories: "
                    + "; ".join(problems) + f" ({LIVE_CLIENT})", pytrace=False)


_tops_before: dict[str, dict[Path, dict[str, int] | None]] = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    _tops_before[item.nodeid] = {place: _top(place) for place in SHARED_PLACES}
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item,
                            nextitem: pytest.Item | None) -> Generator[None, None, None]:
    """The test that creates SHARED_PLACES, or an entry directly in one, is named. Checked
    once its teardown is complete (as the leak checks are): a failure raised from a fixture
    would leave pytest's own state behind for the next test."""
    result = yield
    before = _tops_before.pop(item.nodeid, None)
    problems = [] if before is None else [
        problem for place in SHARED_PLACES
        if (problem := _changes(place, before[place], _top(place))) is not None]
    if problems:
        raise pytest.fail.Exception("this test wrote outside its temporary directories: "
                                    + "; ".join(problems) + f" ({LIVE_CLIENT})", pytrace=False)
    return result
