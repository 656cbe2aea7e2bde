"""A publish that is interrupted, refused or racing keeps the previous revision intact
and servable, and the next publish succeeds."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pycvmfs.errors import LockError, PublishError
from pycvmfs.publisher.storage import LocalStorage
from tests.publish_helpers import Keys, open_repository, pseudo_random, run_publish

REPO_ROOT = Path(__file__).resolve().parents[2]
IS_ROOT = os.geteuid() == 0


def _small_tree(root: Path, text: str = "revision one\n") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "file.txt").write_text(text)
    (root / "dir").mkdir(exist_ok=True)
    (root / "dir" / "inner").write_text("inner\n")
    return root


def _assert_serves(storage: Path, keys: Keys, path: str, content: bytes) -> None:
    with open_repository(storage, keys) as repo:
        assert repo.read(path) == content


def _cli_publish(source: Path, storage: Path, keys: Keys) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pycvmfs", "publish", str(source), "--repo", keys.fqrn,
         "--storage", str(storage), "--keys-dir", str(keys.keys_dir)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _big_tree(root: Path, files: int = 400, size: int = 256 * 1024) -> Path:
    root.mkdir(parents=True)
    for i in range(files):
        (root / f"f{i:04d}").write_bytes(pseudo_random(i, size))
    return root


def test_second_publisher_is_refused(tmp_path: Path, keys: Keys) -> None:
    storage = tmp_path / "repo"
    run_publish(_small_tree(tmp_path / "src"), storage, keys)
    with LocalStorage(storage).lock(), pytest.raises(LockError, match="locked by another"):
        run_publish(tmp_path / "src", storage, keys)
    run_publish(tmp_path / "src", storage, keys)  # lock released: works again


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_publish_keeps_previous_revision(tmp_path: Path, keys: Keys,
                                                     sig: signal.Signals) -> None:
    storage = tmp_path / "repo"
    run_publish(_small_tree(tmp_path / "old"), storage, keys)
    manifest = (storage / ".cvmfspublished").read_bytes()
    proc = _cli_publish(_big_tree(tmp_path / "new"), storage, keys)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        if sum(1 for _ in (storage / "data").rglob("*")) > 300:  # mid-way through objects
            break
        time.sleep(0.01)
    proc.send_signal(sig)
    proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert (storage / ".cvmfspublished").read_bytes() == manifest
    _assert_serves(storage, keys, "/file.txt", b"revision one\n")
    result = run_publish(tmp_path / "new", storage, keys)
    assert result.manifest.revision == 2
    assert not list((storage / "data" / "txn").iterdir())
    _assert_serves(storage, keys, "/f0007", pseudo_random(7, 256 * 1024))


@pytest.mark.skipif(not IS_ROOT or shutil.which("mount") is None, reason="needs root to mount")
def test_full_disk_refuses_publish_and_keeps_previous(tmp_path: Path, keys: Keys) -> None:
    storage = tmp_path / "small"
    storage.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(storage)], check=True)
    try:
        run_publish(_small_tree(tmp_path / "src"), storage, keys)
        manifest = (storage / ".cvmfspublished").read_bytes()
        big = _big_tree(tmp_path / "big", files=40, size=256 * 1024)  # 10 MB, random
        with pytest.raises(PublishError, match="no space left on device"):
            run_publish(big, storage, keys)
        assert (storage / ".cvmfspublished").read_bytes() == manifest
        _assert_serves(storage, keys, "/file.txt", b"revision one\n")
        assert run_publish(_small_tree(tmp_path / "src", "next\n"), storage, keys)
        _assert_serves(storage, keys, "/file.txt", b"next\n")
    finally:
        subprocess.run(["umount", "-l", str(storage)], check=False)


class _Hook:
    """A progress display whose `begin` (called after the walk, before any file is read)
    changes the source: the race a real user causes by editing files mid-publish."""

    def __init__(self, action) -> None:  # type: ignore[no-untyped-def]
        self.action = action

    def begin(self, total_files: int, total_bytes: int) -> None:
        self.action()

    def advance(self, files: int, nbytes: int) -> None:
        pass


@pytest.mark.parametrize(("change", "message"), [
    (lambda p: p.write_text("grown after the walk, now longer\n"), "changed while being published"),
    (lambda p: p.unlink(), "vanished while being published"),
    (lambda p: os.utime(p, (1, 1)), "changed while being published"),
])
def test_file_changing_during_publish_refuses(tmp_path: Path, keys: Keys, change,  # type: ignore[no-untyped-def]
                                              message: str) -> None:
    storage = tmp_path / "repo"
    source = _small_tree(tmp_path / "src")
    run_publish(source, storage, keys)
    manifest = (storage / ".cvmfspublished").read_bytes()
    (source / "racy.txt").write_text("racy\n")
    with pytest.raises(PublishError, match=f"/racy.txt: file {message}"):
        run_publish(source, storage, keys, progress=_Hook(lambda: change(source / "racy.txt")))
    assert (storage / ".cvmfspublished").read_bytes() == manifest


def test_bad_names_and_markers_are_reported_with_paths(tmp_path: Path, keys: Keys) -> None:
    source = _small_tree(tmp_path / "src")
    os.mkdir(os.fsencode(source / "dir") + b"/bad\xffname")
    (source / ".cvmfscatalog").write_bytes(b"")
    (source / ".cvmfs").mkdir()
    with pytest.raises(PublishError) as info:
        run_publish(source, tmp_path / "repo", keys)
    text = str(info.value)
    assert "/dir/bad\\xffname: file name is not valid UTF-8" in text
    assert "/.cvmfscatalog: a catalog marker in the repository root" in text
    assert "/.cvmfs: name is reserved" in text
    assert not (tmp_path / "repo" / ".cvmfspublished").exists()


def test_missing_source_and_keys_give_clear_errors(tmp_path: Path, keys: Keys) -> None:
    with pytest.raises(PublishError, match="cannot read source"):
        run_publish(tmp_path / "nope", tmp_path / "repo", keys)
    wrong = Keys("other.example.org", keys.keys_dir)
    with pytest.raises(Exception, match="other.example.org"):
        run_publish(_small_tree(tmp_path / "src"), tmp_path / "repo2", wrong)


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv")
def test_unreadable_file_is_named(tmp_path: Path, keys: Keys) -> None:
    source = _small_tree(tmp_path / "src")
    secret = source / "secret"
    secret.write_text("no\n")
    secret.chmod(0)
    prefix = []
    if IS_ROOT:  # root reads everything: drop the capabilities that allow it
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
                  "--inh-caps=-dac_override,-dac_read_search"]
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "pycvmfs", "publish", str(source), "--repo",
         keys.fqrn, "--storage", str(tmp_path / "repo"), "--keys-dir", str(keys.keys_dir)],
        cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert "/secret: file is not readable (permission denied)" in proc.stderr
    assert not (tmp_path / "repo" / ".cvmfspublished").exists()
