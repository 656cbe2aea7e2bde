"""apply_layers: OCI layer semantics, the publisher's reserved names and layer trees, with
layers built by `tarfile` (tests/layer_tars.py)."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from pycvmfs.errors import ImageError
from pycvmfs.images.layer_members import normalise_member_name
from pycvmfs.images.layers import apply_layers, unpack_layer_tree
from tests.layer_tars import (
    Host,
    K,
    apply,
    dir_,
    finding,
    kinds,
    link,
    needs_root,
    node,
    reg,
    sym,
    tar,
    wh,
)

# -- semantics ---------------------------------------------------------------------------


@needs_root
def test_regular_file_metadata(root: Path) -> None:
    member = reg("bin/tool", b"#!/bin/sh\n", 0o751, uid=1234, gid=5678)
    member[0].pax_headers = {"mtime": "1600000000.123456789"}
    apply(root, tar(dir_("bin"), member))
    st = (root / "bin/tool").lstat()
    assert (root / "bin/tool").read_bytes() == b"#!/bin/sh\n"
    assert stat.S_IMODE(st.st_mode) == 0o751
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert st.st_mtime_ns == 1_600_000_000_123_456_789


def test_directory_times_and_mode_applied_after_content(root: Path) -> None:
    layer1 = tar(dir_("d", 0o750, mtime=1_000_000_000), reg("d/a"), dir_("d/sub", 0o555))
    layer2 = tar(reg("d/b"), reg("d/sub/c"))  # no header for d: its metadata stays
    apply(root, layer1, layer2)
    st = (root / "d").stat()
    assert st.st_mtime_ns == 1_000_000_000 * 10**9
    assert stat.S_IMODE(st.st_mode) == 0o750
    assert stat.S_IMODE((root / "d/sub").stat().st_mode) == 0o555
    assert (root / "d/sub/c").read_bytes() == b"data"


def test_symlinks_kept_as_text(root: Path, untouched: Host) -> None:
    report = apply(root, tar(sym("abs", str(untouched.path / "secret")), sym("rel", "abs"),
                             sym("dangling", "no/such/thing")))
    assert os.readlink(root / "abs") == str(untouched.path / "secret")
    assert os.readlink(root / "rel") == "abs"
    assert os.readlink(root / "dangling") == "no/such/thing"
    assert report.layers[0].symlinks == 3
    assert report.findings == [] or kinds(report) <= {K.OWNERSHIP_SKIPPED}


def test_hardlinks_in_same_and_lower_layer(root: Path) -> None:
    layer1 = tar(reg("f", b"x"), link("same", "f"))
    layer2 = tar(link("later", "f"), link("./abs-style", "/f"))
    report = apply(root, layer1, layer2)
    ino = (root / "f").stat().st_ino
    assert {(root / n).stat().st_ino for n in ("same", "later", "abs-style")} == {ino}
    assert (root / "f").stat().st_nlink == 4
    assert finding(report, K.NAME_NORMALISED, "./abs-style")  # its target was "/f"


@needs_root
def test_devices_and_fifo_as_umoci_as_root(root: Path) -> None:
    apply(root, tar(node("dev/null", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3),
                    node("dev/loop9", tarfile.BLKTYPE, 0o660, devmajor=7, devminor=9),
                    node("run/fifo", tarfile.FIFOTYPE, 0o620)))
    st = (root / "dev/null").lstat()
    assert stat.S_ISCHR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o666
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)
    st = (root / "dev/loop9").lstat()
    assert stat.S_ISBLK(st.st_mode) and os.minor(st.st_rdev) == 9
    assert stat.S_ISFIFO((root / "run/fifo").lstat().st_mode)
    assert stat.S_IMODE((root / "run/fifo").lstat().st_mode) == 0o620


def test_device_falls_back_to_empty_file_when_mknod_refused(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "mknod", refuse)
    report = apply(root, tar(node("dev/null", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3)))
    st = (root / "dev/null").lstat()
    assert stat.S_ISREG(st.st_mode) and st.st_size == 0 and stat.S_IMODE(st.st_mode) == 0
    assert finding(report, K.DEVICE_AS_FILE, "dev/null")


def test_user_xattrs_kept_others_dropped_and_reported(root: Path) -> None:
    ti, data = reg("usr/bin/ping")
    ti.pax_headers = {"SCHILY.xattr.user.origin": "layer", "SCHILY.xattr.security.capability":
                      "\x01\x00\x00\x02", "SCHILY.xattr.trusted.overlay.opaque": "y"}
    d, _ = dir_("usr")
    d.pax_headers = {"SCHILY.xattr.user.dir": "yes"}
    report = apply(root, tar((d, None), (ti, data)))
    assert os.getxattr(root / "usr/bin/ping", "user.origin") == b"layer"
    assert os.getxattr(root / "usr", "user.dir") == b"yes"
    names = os.listxattr(root / "usr/bin/ping")
    assert "security.capability" not in names and "trusted.overlay.opaque" not in names
    dropped = report.of_kind(K.XATTR_DROPPED)
    assert len(dropped) == 1 and "security.capability" in dropped[0].why
    assert "trusted.overlay.opaque" in dropped[0].why


def test_user_xattrs_of_a_merged_directory_replaced(root: Path) -> None:
    d1, _ = dir_("d")
    d1.pax_headers = {"SCHILY.xattr.user.a": "1"}
    d2, _ = dir_("d")
    d2.pax_headers = {"SCHILY.xattr.user.b": "2"}
    apply(root, tar((d1, None)), tar((d2, None)))
    assert sorted(os.listxattr(root / "d")) == ["user.b"]


@needs_root
def test_setid_bits_kept_as_data_and_reported(root: Path) -> None:
    report = apply(root, tar(reg("bin/su", mode=0o4755, uid=0),
                             dir_("var/mail", 0o2775, gid=8)))
    assert stat.S_IMODE((root / "bin/su").stat().st_mode) == 0o4755
    assert stat.S_IMODE((root / "var/mail").stat().st_mode) == 0o2775
    assert finding(report, K.SETID_KEPT, "bin/su")
    assert finding(report, K.SETID_KEPT, "var/mail")


def test_whiteout_removes_lower_file_and_subtree(root: Path) -> None:
    lower = tar(dir_("etc"), reg("etc/a"), reg("etc/b"), dir_("opt"), dir_("opt/x"),
                reg("opt/x/y"), sym("lnk", "etc"))
    upper = tar(wh("etc/.wh.a"), wh(".wh.opt"), wh(".wh.lnk"), wh(".wh.absent"))
    report = apply(root, lower, upper)
    assert sorted(os.listdir(root)) == ["etc"]
    assert os.listdir(root / "etc") == ["b"]
    assert report.layers[1].whiteouts == 4


@pytest.mark.parametrize("order", ["whiteout-first", "whiteout-last"])
def test_whiteout_spares_entries_of_its_own_layer(root: Path, order: str) -> None:
    lower = tar(reg("f", b"old"))
    new, out = reg("f", b"new"), wh(".wh.f")
    upper = tar(out, new) if order == "whiteout-first" else tar(new, out)
    apply(root, lower, upper)
    assert (root / "f").read_bytes() == b"new"


@pytest.mark.parametrize("order", ["marker-first", "marker-last"])
def test_opaque_directory_hides_lower_content_only(root: Path, order: str) -> None:
    lower = tar(dir_("d"), reg("d/old"), dir_("d/sub"), reg("d/sub/old"), reg("keep"))
    same = [dir_("d/sub"), reg("d/sub/new"), reg("d/new")]
    marker = wh("d/.wh..wh..opq")
    members = [dir_("d"), marker, *same] if order == "marker-first" else [dir_("d"), *same,
                                                                            marker]
    report = apply(root, lower, tar(*members))
    assert sorted(os.listdir(root / "d")) == ["new", "sub"]
    assert os.listdir(root / "d/sub") == ["new"]
    assert (root / "keep").exists()
    assert report.layers[1].opaque == 1


def test_opaque_root(root: Path) -> None:
    apply(root, tar(reg("a"), reg("b")), tar(reg("c"), wh(".wh..wh..opq")))
    assert os.listdir(root) == ["c"]


def test_types_replace_each_other(root: Path) -> None:
    lower = tar(dir_("x"), reg("x/inner"), reg("y"), sym("z", "y"), dir_("m"), reg("m/lower"))
    upper = tar(reg("x", b"file now"), dir_("y"), reg("z", b"not a link"), dir_("m"),
                reg("m/upper"))
    apply(root, lower, upper)
    assert (root / "x").read_bytes() == b"file now"
    assert (root / "y").is_dir()
    assert not (root / "z").is_symlink() and (root / "z").read_bytes() == b"not a link"
    assert sorted(os.listdir(root / "m")) == ["lower", "upper"]


@pytest.mark.parametrize("compression", ["plain", "gzip", "zstd"])
def test_compressions_detected_by_magic(root: Path, compression: str) -> None:
    layer = tar(dir_("d"), reg("d/f", b"payload" * 1000), compression=compression)
    report = apply(root, layer)
    assert (root / "d/f").read_bytes() == b"payload" * 1000
    assert report.layers[0].compression == compression
    assert report.layers[0].tar_bytes >= 7000


def test_layers_given_as_paths(tmp_path: Path, root: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(tar(reg("f", b"from a path"), compression="gzip"))
    report = apply_layers([blob, str(blob)], root)
    assert (root / "f").read_bytes() == b"from a path"
    assert report.layers[0].source == str(blob)


def test_root_entry_sets_root_metadata(root: Path) -> None:
    apply(root, tar(dir_("./", 0o711, mtime=1_234_567_890), reg("f")))
    st = root.stat()
    assert stat.S_IMODE(st.st_mode) == 0o711 and st.st_mtime == 1_234_567_890


def test_normalise_member_name() -> None:
    assert normalise_member_name("./a/b/") == (["a", "b"], False)
    assert normalise_member_name("/etc/x") == (["etc", "x"], True)
    assert normalise_member_name("../../etc/x") == (["etc", "x"], True)
    assert normalise_member_name("a/../../b") == (["b"], True)
    assert normalise_member_name("..") == ([], True)


# -- the publisher's reserved names, layer trees ----------------------------------------


@pytest.mark.parametrize("name", ["d/.pycvmfs-kept", ".pycvmfs-kept",
                                  "d/.pycvmfs-kept-aside.x/old/f"])
def test_publisher_markers_are_skipped(root: Path, name: str) -> None:
    """A layer must not make the publisher graft (or hide) a directory of the image."""
    report = apply(root, tar(dir_("d"), reg("d/f"), reg(name)))
    assert (root / "d/f").exists() and not (root / name).exists()
    assert not (root / "d/.pycvmfs-kept-aside.x").exists()
    assert report.of_kind(K.RESERVED_NAME)


@needs_root
def test_layer_tree_records_whiteouts_overlayfs_style(root: Path, untouched: Host) -> None:
    layer = tar(dir_("a", mode=0o750), wh("a/.wh..wh..opq"), reg("a/new"), wh(".wh.gone"),
                wh("b/.wh.deep"), reg("keep"), wh(".wh.."), sym("up", "../../.."),
                wh("up/.wh.secret"))
    counted: list[int] = []
    report = unpack_layer_tree(io.BytesIO(layer), root, on_entry=counted.append)
    gone = (root / "gone").lstat()
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0 and stat.S_IMODE(gone.st_mode) == 0
    assert stat.S_ISCHR((root / "b/deep").lstat().st_mode)  # parent made on the way
    assert os.getxattr(root / "a", "trusted.overlay.opaque") == b"y"
    assert stat.S_IMODE((root / "a").stat().st_mode) == 0o750
    assert (root / "a/new").exists() and (root / "keep").exists()
    assert not any(p.name.startswith(".wh.") for p in root.rglob("*"))
    assert stat.S_ISCHR((root / "secret").lstat().st_mode)  # `up` resolved inside the root
    assert report.layers[0].whiteouts == 3 and report.layers[0].opaque == 1
    assert finding(report, K.WHITEOUT_INVALID, ".wh..")
    assert len(counted) == 9


def test_layer_tree_without_root_names_the_way_out(root: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*args: object, **kwargs: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "mknod", refused)
    with pytest.raises(ImageError, match="needs root.*skip layer trees"):
        unpack_layer_tree(io.BytesIO(tar(reg("f"), wh(".wh.f"))), root)
