"""`bench/client.py --quick --image-only` runs end to end: the test image ingested into a
repository, interleaved rounds of parallel readers, `ls -lR`, mount times and container
starts (warm, cold), bytes fetched and objects fetched twice -- for pycvmfs and, through the
very same code, for a stand-in "cvmfs2" (a script mounting with pycvmfs from the config file
the benchmark writes for the reference client), so the side-by-side block is exercised
without a reference build."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.bench_runs import ROOT, run_bench
from tests.images import require_images
from tests.registry import needs_tools
from tests.servers import NEEDS_FUSE_AND_NGINX, shared_scratch

# the ingest of the image (~50 s on 2 cores under load) dominates; measured ~100 s in all
SMOKE_BUDGET_S = 240.0

pytestmark = [pytest.mark.slow, *NEEDS_FUSE_AND_NGINX, needs_tools("bwrap", "fusermount3")]

STAND_IN = """#!/bin/sh
# stands in for cvmfs2: cvmfs2 -o config=FILE,allow_other,fsname=cvmfs2 FQRN MOUNTPOINT
options=${{2#config=}}
export PYCVMFS_CONFIG_ROOT=/nonexistent PYTHONPATH={root}
exec {python} -m pycvmfs mount --config "${{options%%,*}}" "$3" "$4"
"""


def test_quick_image_rows() -> None:
    require_images()  # skips when the images cannot be built here; builds them otherwise
    with shared_scratch("pycvmfs-bench-image-smoke-") as workdir:
        stand_in = workdir / "cvmfs2"
        stand_in.write_text(STAND_IN.format(root=ROOT, python=sys.executable))
        stand_in.chmod(0o755)
        report = workdir / "results.json"
        run = run_bench("client.py", ["--image-only", "--rss-entries", "200", "--workdir",
                                      str(workdir / "work"), "--json", str(report),
                                      "--reference-cvmfs2", str(stand_in)],
                        ratio_column="x local", timeout=2 * SMOKE_BUDGET_S)
        for name in ("img 8 readers pycvmfs, empty cache", "img 8 readers cvmfs2, cache filled",
                     "img mount pycvmfs, empty cache", "img ls -lR cvmfs2, fresh mount",
                     "img ls -lR pycvmfs, repeat (same mount)", "ls -lR many/ pycvmfs",
                     "start pycvmfs, cache filled (fresh mount)", "start cvmfs2, empty cache",
                     "objects fetched twice", "img VmRSS pycvmfs after ls -lR"):
            assert name in run.table
        assert "x cvmfs2" in run.stdout
        results = json.loads(report.read_text())
        rows = {r["name"]: r for r in results["rows"]}
        pairs = {p["pycvmfs"]: p for p in results["reference_cvmfs2"]["pairs"]}
        assert "start pycvmfs, empty cache" in pairs
        fetched = [r for r in rows.values() if r["unit"] == "%"]
        assert fetched and all(0 < r["amount"] < 100 for r in fetched)
        twice = [r["amount"] for r in rows.values() if r["unit"] == "count"]
        assert twice and all(n >= 0 and n == int(n) for n in twice)
        assert rows["img 8 readers pycvmfs, cache filled"]["amount"] > 0
        leftovers = [line for line in Path("/proc/mounts").read_text().splitlines()
                     if str(workdir) in line]
        assert not leftovers, leftovers
        assert run.seconds < SMOKE_BUDGET_S, f"smoke run took {run.seconds:.1f} s"
