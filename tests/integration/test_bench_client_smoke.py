"""`bench/client.py --quick --no-image` runs end to end: tiny tree, publish, nginx, three
mounts, table (the image rows have a smoke test of their own:
test_bench_client_image_smoke.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bench_runs import run_bench
from tests.servers import NEEDS_FUSE_AND_NGINX, shared_scratch

SMOKE_BUDGET_S = 20.0

pytestmark = [
    pytest.mark.slow,
    *NEEDS_FUSE_AND_NGINX,
]


@pytest.fixture
def workdir() -> Iterator[Path]:
    """Outside pytest's 0700 tmp_path: nginx workers (nobody) must reach the storage."""
    with shared_scratch("pycvmfs-bench-smoke-") as path:
        yield path


def test_quick_run_prints_the_table(workdir: Path) -> None:
    report = workdir / "results.json"
    run = run_bench("client.py", ["--entries", "120", "--size-gb", "0.008", "--parallel-mb",
                                  "0.5", "--rss-entries", "300", "--no-image", "--workdir",
                                  str(workdir / "work"), "--json", str(report)],
                    ratio_column="x local", timeout=120)
    table = run.table
    for name in ("walk local, warm", "walk mount, cold (catalogs cached)",
                 "walk mount, warm (same mount)", "seq read mount, cold (empty cache)",
                 "8 readers mount, cold", "VmRSS after walking"):
        assert name in table
    assert "targets met" in run.stdout
    rows = json.loads(report.read_text())["rows"]
    same = [r for r in rows if r["target"] == "same entries"]
    assert same and all(r["passed"] for r in same)  # the mount shows every entry
    assert not os.path.ismount(workdir / "work" / "run" / "mnt")
    assert run.seconds < SMOKE_BUDGET_S, f"smoke run took {run.seconds:.1f} s"
