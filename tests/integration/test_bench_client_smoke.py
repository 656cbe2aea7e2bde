"""`bench/client.py --quick` runs end to end: tiny tree, publish, nginx, three mounts, table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import NEEDS_FUSE_AND_NGINX, shared_scratch

ROOT = Path(__file__).resolve().parents[2]
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
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "client.py"), "--quick", "--entries", "120",
         "--size-gb", "0.008", "--parallel-mb", "0.5", "--rss-entries", "300",
         "--workdir", str(workdir / "work"), "--json", str(report)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("measurement"))
    assert "x local" in lines[header] and "target" in lines[header]
    table = "\n".join(lines[header:])
    for name in ("walk local, warm", "walk mount, cold (catalogs cached)",
                 "walk mount, warm (same mount)", "seq read mount, cold (empty cache)",
                 "8 readers mount, cold", "VmRSS after walking"):
        assert name in table
    assert "targets met" in done.stdout
    rows = json.loads(report.read_text())["rows"]
    same = [r for r in rows if r["target"] == "same entries"]
    assert same and all(r["passed"] for r in same)  # the mount shows every entry
    assert not os.path.ismount(workdir / "work" / "run" / "mnt")
    assert elapsed < SMOKE_BUDGET_S, f"smoke run took {elapsed:.1f} s"
