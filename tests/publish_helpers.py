"""Shared helpers for publisher tests: a tree with every kind of entry, a publish
call with test defaults, and a verifying reader over the result."""

from __future__ import annotations

import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from pycvmfs.format.certificates import load_public_key
from pycvmfs.format.chunking import ChunkParams
from pycvmfs.format.compression import Compression
from pycvmfs.format.hashes import Algorithm
from pycvmfs.publisher.pipeline import Settings
from pycvmfs.publisher.publish import PublishOptions, PublishProgress, PublishResult, publish
from pycvmfs.repository import open as repository_open
from pycvmfs.repository.open import RevisionSelector
from pycvmfs.repository.repository import Repository
from pycvmfs.repository.source import LocalSource

FQRN = "test.pycvmfs.org"
SMALL_CHUNKS = ChunkParams.parse("16K,32K,64K")


@dataclass(frozen=True)
class Keys:
    fqrn: str
    keys_dir: Path

    @property
    def public_key_file(self) -> Path:
        return self.keys_dir / f"{self.fqrn}.pub"


def run_publish(source: Path, storage: Path, keys: Keys, *, tag: str | None = None,
                algorithm: Algorithm = Algorithm.SHA1,
                compression: Compression = Compression.ZLIB,
                chunking: ChunkParams | None = SMALL_CHUNKS, ttl: int | None = None,
                progress: PublishProgress | None = None,
                timestamp: int | None = None) -> PublishResult:
    options = PublishOptions(keys.fqrn, source, storage, keys.keys_dir,
                             Settings(algorithm, compression, chunking), tag=tag,
                             ttl_seconds=ttl, timestamp=timestamp)
    return publish(options, progress)


def open_repository(storage: Path, keys: Keys, *, tag: str | None = None) -> Repository:
    public = load_public_key(keys.public_key_file.read_bytes())
    return repository_open.open_repository(LocalSource(storage), keys.fqrn, [public],
                                           RevisionSelector.of(tag=tag))


def pseudo_random(seed: int, size: int) -> bytes:
    import hashlib

    return hashlib.shake_256(str(seed).encode()).digest(size)


def versioned_tree(root: Path, version: int, *, big_bytes: int = 200_000,
                   stamp: int | None = None) -> Path:
    """A small tree whose revisions differ in two files: one unchanged file, one changing
    text file, a chunked file (with SMALL_CHUNKS) and a nested catalog. `stamp`: every
    entry's mtime, for byte-identical publishes."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "same.txt").write_text("same in every revision\n")
    (root / "changing.txt").write_text(f"version {version}\n")
    (root / "big.bin").write_bytes(pseudo_random(version, big_bytes))
    nested = root / "nested"
    nested.mkdir(exist_ok=True)
    (nested / ".cvmfscatalog").touch()
    (nested / "inner.txt").write_text(f"nested {version}\n")
    if stamp is not None:
        for path in root.rglob("*"):
            os.utime(path, (stamp, stamp), follow_symlinks=False)
    return root


def make_full_tree(root: Path) -> Path:
    """A source tree with every kind of entry the publisher must carry."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "plain.txt").write_text("plain text\n")
    (root / "empty").write_bytes(b"")
    (root / "mode600").write_text("private\n")
    os.chmod(root / "mode600", 0o600)
    (root / "exec.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "exec.sh", 0o755)
    (root / "setuid-data").write_text("setuid bit kept as data\n")
    os.chmod(root / "setuid-data", 0o4755)
    (root / "dup-a.txt").write_text("duplicate content\n")
    (root / "sub").mkdir()
    (root / "sub" / "dup-b.txt").write_text("duplicate content\n")
    os.link(root / "plain.txt", root / "hardlink-to-plain")
    os.link(root / "plain.txt", root / "sub" / "cross-dir-hardlink")
    os.symlink("plain.txt", root / "link-rel")
    os.symlink("/etc/does/not/exist", root / "link-abs")
    os.symlink("$(PYCVMFS_TEST_ARCH:-x86_64)/lib", root / "link-var")
    (root / "big.bin").write_bytes(pseudo_random(1, 300_000))  # chunked with SMALL_CHUNKS
    (root / "medium.bin").write_bytes(pseudo_random(2, 12_000))  # below the min chunk
    os.setxattr(root / "plain.txt", "user.foo", b"bar")
    os.setxattr(root / "sub", "user.dirattr", b"\x00\x01binary")
    (root / "weird names").mkdir()
    (root / "weird names" / "new\nline").write_text("newline in the name\n")
    (root / "weird names" / "ünïcødé ✓").write_text("unicode\n")
    os.mkfifo(root / "fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "socket"))
    if os.geteuid() == 0:
        os.mknod(root / "chardev", stat.S_IFCHR | 0o644, os.makedev(1, 3))
        os.chown(root / "plain.txt", 1234, 5678)
    nested = root / "nested"
    (nested / "deeper" / "leaf").mkdir(parents=True)
    (nested / ".cvmfscatalog").write_bytes(b"")
    (nested / "deeper" / "file").write_text("inside a nested catalog\n")
    (nested / "deeper" / "leaf" / ".cvmfscatalog").write_bytes(b"")
    (nested / "deeper" / "leaf" / "x").write_text("grandchild catalog\n")
    (root / ".cvmfsdirtab").write_text("/releases/*\n! *.tmp\n")
    for name in ("r1", "r2", "skip.tmp"):
        (root / "releases" / name).mkdir(parents=True)
        (root / "releases" / name / "f").write_text(f"release {name}\n")
    os.utime(root / "plain.txt", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    return root
