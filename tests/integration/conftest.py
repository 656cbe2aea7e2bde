"""Fixtures shared by integration test modules: expensive setups made once per session, and
how the tier is split across pytest-xdist workers (`make test-integration`, `--dist
loadgroup`): tests in one group run one after the other on one worker. A module is one
group (its tests may build on each other through module fixtures, and a module fixture is
built once), and some modules share one:

- "ingested": every test of the session's ingested images, so the fixture is built once;
- "serial" (a marker, not a group): the dead-mount tests, which mount and unmount
  /sys/fs/fuse/connections and expect it as they left it, while any root unmount of a hung
  mount elsewhere may mount it for a moment: `make test-integration` runs them after the
  others, alone;
- "bench": the benchmark smoke runs, each of which loads both cores on its own.

/dev/fuse opened to every user is shared by workers through tests/mounting.py."""

import pytest

from tests.ingested import ingested_images

__all__ = ["ingested_images"]


@pytest.hookimpl(tryfirst=True)  # before xdist's loadgroup reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "ingested_images" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("ingested"))
        elif item.path.name == "test_umount_dead.py":
            item.add_marker(pytest.mark.serial)
        elif item.path.name.startswith("test_bench_"):
            item.add_marker(pytest.mark.xdist_group("bench"))
        else:
            item.add_marker(pytest.mark.xdist_group(item.path.stem))
