"""Reading /proc/self/mountinfo lines and mount point paths without touching a mount."""

from __future__ import annotations

from pathlib import Path

import pytest

from pycvmfs.cli.mount import _failure_of
from pycvmfs.fs.mount import MountEntry, mount_point_path

# the kernel writes " ", "#" and a few others as octal escapes
FUSE_LINE = ("412 27 0:83 / /tmp/with\\040space/mnt ro,nosuid,nodev,relatime shared:225 "
             "master:1 - fuse cvmfs2\\043demo.pycvmfs.org ro,user_id=65534,group_id=65534")
PROC_LINE = "22 27 0:21 / /proc rw,relatime - proc proc rw"


def test_fuse_entry() -> None:
    entry = MountEntry.from_fields(FUSE_LINE.split())
    assert entry.mountpoint == "/tmp/with space/mnt"
    assert entry.device == "0:83"
    assert (entry.fstype, entry.source) == ("fuse", "cvmfs2#demo.pycvmfs.org")
    assert entry.is_fuse and entry.user_id == 65534


def test_other_file_system() -> None:
    entry = MountEntry.from_fields(PROC_LINE.split())
    assert (entry.mountpoint, entry.fstype) == ("/proc", "proc")
    assert not entry.is_fuse and entry.user_id is None


@pytest.mark.parametrize("subtype", ["fuse.sshfs", "fuseblk"])
def test_fuse_subtypes(subtype: str) -> None:
    fields = PROC_LINE.replace("- proc proc", f"- {subtype} src").split()
    assert MountEntry.from_fields(fields).is_fuse


def test_mount_point_path_resolves_only_the_parent(tmp_path: Path) -> None:
    real = tmp_path / "real"
    (real / "mnt").mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    assert mount_point_path(tmp_path / "link" / "mnt") == str(real / "mnt")
    assert mount_point_path(tmp_path / "link" / "mnt" / ".") == str(real / "mnt")
    (tmp_path / "to-mnt").symlink_to(real / "mnt")  # the last component is not followed
    assert mount_point_path(tmp_path / "to-mnt") == str(tmp_path / "to-mnt")
    assert mount_point_path("/") == "/"


@pytest.mark.parametrize(("stderr", "message"), [
    ("pycvmfs: error: cannot use cache directory /x\n", "cannot use cache directory /x"),
    ("a warning\npycvmfs: error: the cause\n", "the cause"),
    ("pycvmfs: internal error: ValueError: v\n", "internal error: ValueError: v"),
    ("something\nelse\n", "something else"),
    ("", ""),
    ("\0pycvmfs-started 41\n\0pycvmfs-degraded offline\npycvmfs: error: the cause\n",
     "the cause"),
])
def test_background_failure_relays_one_line(stderr: str, message: str) -> None:
    assert _failure_of(stderr.encode()) == message
