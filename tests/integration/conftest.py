"""Fixtures shared by integration test modules: expensive setups made once per session, and
the checks that keep `make test-integration`'s split over two workers right
(tests/xdist_groups.py): a module using the session's ingested images must be in their group,
and the dead-mount tests run last and alone (marked serial: they mount and unmount
/sys/fs/fuse/connections and expect it as they left it, while a root unmount of a hung mount
elsewhere may mount it for a moment). /dev/fuse opened to every user is shared by workers
through tests/mounting.py."""

import pytest

from tests.ingested import ingested_images
from tests.xdist_groups import group_of

__all__ = ["ingested_images"]


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by the serial mark
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "ingested_images" in getattr(item, "fixturenames", ()) \
                and group_of(item.nodeid) != "ingested":
            raise pytest.UsageError(f"{item.path.name} uses ingested_images: list it under "
                                    "'ingested' in tests/xdist_groups.py")
        if item.path.name == "test_umount_dead.py":
            item.add_marker(pytest.mark.serial)
