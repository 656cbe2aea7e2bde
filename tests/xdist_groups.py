"""How `make test-integration` splits the integration tier over two pytest-xdist workers
(`--dist loadscope --no-loadscope-reorder`, with the scheduler below through
`pytest_xdist_make_scheduler` in tests/conftest.py): each module runs whole on one worker,
its tests in order (they may build on each other through module fixtures, and a module
fixture is built once), and the modules of one shared group run on the same worker:

- "ingested": the modules using the session's ingested images (tests/ingested.py), so the
  fixture is built once (tests/integration/conftest.py refuses a module using it that is not
  listed here);
- "bench": the benchmark smoke runs, each of which loads both cores on its own, first in
  collection order so the longest unit starts first.

Groups are found by module name, not by `xdist_group` marks: pytest-xdist 3.8 marks a group
by rewriting `item._nodeid`, which pytest 9.2 no longer reads.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from xdist.scheduler import LoadScopeScheduling

SHARED_GROUPS = {
    "ingested": ("test_exec_images.py", "test_gc_report.py", "test_ingest.py",
                 "test_podman_store.py", "test_run.py", "test_snapshotter_mount.py",
                 "test_snapshotter_pull.py"),
    "bench": ("test_bench_client_image_smoke.py", "test_bench_client_smoke.py",
              "test_bench_images_smoke.py"),
}
GROUP_OF = {module: group for group, modules in SHARED_GROUPS.items() for module in modules}


def group_of(nodeid: str) -> str:
    """The unit of work a test belongs to: its shared group, or its module."""
    module = nodeid.split("::", 1)[0]
    return GROUP_OF.get(PurePosixPath(module).name, module)


class ModuleGroupScheduling(LoadScopeScheduling):
    """loadscope, with modules of a shared group as one scope."""

    def _split_scope(self, nodeid: str) -> str:
        return group_of(nodeid)
