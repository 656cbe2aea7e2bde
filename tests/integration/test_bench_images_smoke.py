"""`bench/images.py --quick` runs end to end: registry push, ingest, nginx, pull + unpack + run
vs `pycvmfs run` cold and warm, bytes fetched, the ingest rows (first image, second image
sharing layers, unchanged again, working tree and storage), the table with its targets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.bench_runs import run_bench
from tests.containerd import missing_requirement as containerd_missing
from tests.images import require_images
from tests.registry import NEEDS_REGISTRY_TOOLS, needs_tools
from tests.servers import NEEDS_FUSE_AND_NGINX, shared_scratch

# measured 63-84 s alone with the test images cached (setup ingest included; the ingest rows
# add ~50 s: python into a fresh repository, then base, then python again; the containerd
# rows ~20 s), 141 s beside the other pytest worker (without the containerd rows)
SMOKE_BUDGET_S = 240.0

pytestmark = [pytest.mark.slow, *NEEDS_FUSE_AND_NGINX, NEEDS_REGISTRY_TOOLS,
              needs_tools("bwrap")]


def test_quick_run_prints_the_table() -> None:
    require_images()  # skips when the images cannot be built here; builds them otherwise
    with shared_scratch("pycvmfs-bench-images-smoke-") as workdir:
        report = workdir / "results.json"
        run = run_bench("images.py", ["--workdir", str(workdir / "work"), "--json",
                                      str(report)], ratio_column="x pull", timeout=300)
        table = run.table
        for name in ("pull + unpack + run (baseline)", "pycvmfs run, cold (mount + empty cache)",
                     "pycvmfs run, warm (mounted, cache filled)",
                     "bytes fetched, cold start (nginx log)",
                     "pull + unpack (skopeo + umoci, no run)",
                     "ingest, first image (python, fresh repo)",
                     "ingest, second image sharing layers (base)",
                     "ingest again, unchanged (python)", "working tree after both ingests",
                     "storage after both ingests"):
            assert name in table
        assert "x pull+unpack" in table and "skipped, no publish" in table
        if containerd_missing() is None:  # containerd with the snapshotter, beside ctr pull
            assert "containerd + pycvmfs snapshotter, cold" in table
            [runtime] = json.loads(report.read_text())["containerd"]
            assert 0 < runtime["snap_registry_bytes"] + runtime["snap_repository_bytes"] \
                < runtime["ctr_bytes"] / 10
        else:
            assert "containerd rows" in table
        assert "targets met" in run.stdout
        results = json.loads(report.read_text())
        assert results["rounds"] == 1
        mount = results["mount"][0]
        assert 0 < mount["bytes"] < results["image_layers_bytes"]  # something, not everything
        assert mount["warm_bytes"] == 0  # the warm run is served from the cache
        names = {row["name"] for row in results["rows"]}
        assert {"ingest, first image (python, fresh repo)",
                "ingest, second image sharing layers (base)",
                "ingest again, unchanged (python)", "working tree after both ingests",
                "storage after both ingests"} <= names
        ingested = results["ingest"][0]
        assert ingested["again_skipped"] == 1.0
        assert ingested["again"] < ingested["first"]
        # file-level dedup: base's files are all in python's image already
        assert 0 < ingested["second_bytes_written"] < ingested["first_bytes_written"] / 10
        # published images are kept stubs: the working tree is far below the rootfs
        assert ingested["work_bytes"] < results["image_rootfs_bytes"] / 10
        assert 0 < ingested["storage_bytes"]
        leftovers = [line for line in Path("/proc/mounts").read_text().splitlines()
                     if str(workdir) in line]
        assert not leftovers, leftovers
        assert not any(p.name.startswith("run-") for p in (workdir / "work").iterdir())
        assert os.path.isdir(workdir / "work")
        assert run.seconds < SMOKE_BUDGET_S, f"smoke run took {run.seconds:.1f} s"
