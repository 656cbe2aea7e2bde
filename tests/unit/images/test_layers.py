"""apply_layers: OCI layer semantics and hostile tars, with layers built here by `tarfile`.

Every hostile case checks that a sentinel directory outside the rootfs is byte-for-byte and
inode-for-inode untouched, and that the report names the case.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pycvmfs.errors import ImageError
from pycvmfs.images.layer_members import LayerLimits, normalise_member_name
from pycvmfs.images.layer_report import FindingKind, LayerReport
from pycvmfs.images.layers import apply_layers, unpack_layer_tree

K = FindingKind
AS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not AS_ROOT, reason="mknod/chown need root")

# -- building layers --------------------------------------------------------------------


Member = tuple[tarfile.TarInfo, bytes | None]


def info(name: str, kind: bytes, mode: int, **attrs: object) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.mtime = attrs.pop("mtime", 1_600_000_000)  # type: ignore[assignment]
    for key, value in attrs.items():
        setattr(ti, key, value)
    return ti


def reg(name: str, data: bytes = b"data", mode: int = 0o644, **attrs: object) -> Member:
    ti = info(name, tarfile.REGTYPE, mode, **attrs)
    ti.size = len(data)
    return ti, data


def dir_(name: str, mode: int = 0o755, **attrs: object) -> Member:
    return info(name, tarfile.DIRTYPE, mode, **attrs), None


def sym(name: str, target: str) -> Member:
    return info(name, tarfile.SYMTYPE, 0o777, linkname=target), None


def link(name: str, target: str) -> Member:
    return info(name, tarfile.LNKTYPE, 0o644, linkname=target), None


def node(name: str, kind: bytes, mode: int, **attrs: object) -> Member:
    return info(name, kind, mode, **attrs), None


def wh(name: str) -> Member:
    return reg(name, b"")


def tar(*members: Member, compression: str = "plain", fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue()
    if compression == "gzip":
        return gzip.compress(raw)
    if compression == "zstd":
        zstandard = pytest.importorskip("zstandard")
        return bytes(zstandard.ZstdCompressor().compress(raw))
    return raw


def apply(root: Path, *layers: bytes, limits: LayerLimits | None = None) -> LayerReport:
    return apply_layers([io.BytesIO(layer) for layer in layers], root, limits=limits)


def kinds(report: LayerReport) -> set[FindingKind]:
    return {f.kind for f in report.findings}


def finding(report: LayerReport, kind: FindingKind, member: str) -> bool:
    return any(f.kind is kind and f.member == member for f in report.findings)


# -- the host sentinel -------------------------------------------------------------------


@dataclass
class Host:
    """A directory next to the rootfs that no layer may touch."""

    path: Path

    def snapshot(self) -> list[tuple[str, int, int, int, int, bytes]]:
        rows = []
        for p in sorted([self.path, *self.path.rglob("*")]):
            st = p.lstat()
            data = p.read_bytes() if p.is_file() and not p.is_symlink() else b""
            rows.append((str(p), st.st_ino, st.st_mode, st.st_nlink, st.st_mtime_ns, data))
        return rows


@pytest.fixture
def host(tmp_path: Path) -> Host:
    path = tmp_path / "host"
    path.mkdir()
    (path / "secret").write_bytes(b"sentinel")
    (path / "dir").mkdir()
    (path / "dir" / "keep").write_bytes(b"keep")
    return Host(path)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "a" / "rootfs"  # `../../host` from inside reaches the sentinel


@pytest.fixture
def untouched(host: Host):  # type: ignore[no-untyped-def]
    before = host.snapshot()
    yield host
    assert host.snapshot() == before, "a layer touched the host outside the rootfs"


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


# -- hostile input -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../host/secret", "/HOST/secret", "a/../../../host/secret"])
def test_dotdot_and_absolute_names_stay_inside(root: Path, untouched: Host, name: str) -> None:
    if name.startswith("/HOST"):
        name = str(untouched.path / "secret")
    report = apply(root, tar(reg(name, b"evil")))
    inside = root / normalise_member_name(name)[0][0]
    assert inside.exists() and inside.is_relative_to(root)
    assert finding(report, K.NAME_NORMALISED, name)


def test_write_through_absolute_symlink_to_host_stays_inside(root: Path,
                                                              untouched: Host) -> None:
    layer1 = tar(sym("etc", str(untouched.path)))
    layer2 = tar(reg("etc/secret", b"evil"), reg("etc/dir/keep", b"evil"))
    report = apply(root, layer1, layer2)
    rescoped = root / str(untouched.path).lstrip("/")
    assert (rescoped / "secret").read_bytes() == b"evil"
    assert os.readlink(root / "etc") == str(untouched.path)
    assert finding(report, K.PARENT_RESCOPED, "etc/secret")


def test_write_through_self_referencing_symlink_is_skipped(root: Path) -> None:
    etc_passwd = Path("/etc/passwd").stat()
    report = apply(root, tar(sym("etc", "/etc")), tar(reg("etc/passwd", b"root::0:0::/:")))
    assert Path("/etc/passwd").stat() == etc_passwd
    assert os.readlink(root / "etc") == "/etc"
    hit = report.of_kind(K.PARENT_UNRESOLVABLE)
    assert [f.member for f in hit] == ["etc/passwd"] and "loop" in hit[0].why


def test_write_through_relative_escaping_symlink_is_clamped(root: Path,
                                                            untouched: Host) -> None:
    report = apply(root, tar(sym("up", "../../../../../host")), tar(reg("up/secret", b"evil")))
    assert (root / "host/secret").read_bytes() == b"evil"
    assert finding(report, K.PARENT_RESCOPED, "up/secret")
    assert finding(report, K.SYMLINK_ESCAPES, "up")


def test_write_through_in_tree_symlink_is_followed(root: Path) -> None:
    report = apply(root, tar(dir_("usr"), dir_("usr/lib"), sym("lib", "usr/lib")),
                   tar(reg("lib/libc.so", b"elf")))
    assert (root / "usr/lib/libc.so").read_bytes() == b"elf"
    assert os.readlink(root / "lib") == "usr/lib"
    assert not kinds(report) & {K.PARENT_RESCOPED, K.PARENT_UNRESOLVABLE}


def test_parent_that_is_a_file_is_skipped(root: Path) -> None:
    report = apply(root, tar(reg("f"), reg("f/child")))
    assert (root / "f").read_bytes() == b"data"
    assert finding(report, K.PARENT_UNRESOLVABLE, "f/child")


def test_escaping_symlink_kept_and_never_written_through(root: Path, untouched: Host) -> None:
    target = "../../host/secret"
    report = apply(root, tar(sym("x", target), reg("x", b"same layer replaces the link")),
                   tar(sym("y", str(untouched.path / "secret"))), tar(reg("y", b"upper")))
    assert (root / "x").read_bytes() == b"same layer replaces the link"
    assert (root / "y").read_bytes() == b"upper"
    assert finding(report, K.SYMLINK_ESCAPES, "x")
    assert finding(report, K.DUPLICATE, "x")


def test_hardlinks_to_outside_are_refused(root: Path, untouched: Host) -> None:
    report = apply(root, tar(link("h1", "../../host/secret"),
                             link("h2", str(untouched.path / "secret")),
                             link("h3", "..")))
    assert not any((root / n).exists() for n in ("h1", "h2", "h3"))
    assert finding(report, K.NAME_NORMALISED, "h1")
    assert {f.member for f in report.of_kind(K.HARDLINK_SKIPPED)} == {"h1", "h2", "h3"}


def test_hardlink_through_symlinks_stays_inside(root: Path, untouched: Host) -> None:
    layer1 = tar(dir_("real"), reg("real/f", b"in tree"), sym("d", "real"),
                 sym("out", str(untouched.path)), sym("abs", str(untouched.path / "secret")))
    layer2 = tar(link("h", "d/f"), link("h-out", "out/secret"), link("h-abs", "abs"))
    report = apply(root, layer1, layer2)
    assert (root / "h").stat().st_ino == (root / "real/f").stat().st_ino
    assert finding(report, K.HARDLINK_THROUGH_SYMLINK, "h")
    assert finding(report, K.HARDLINK_SKIPPED, "h-out")  # resolves to <root>/<host>: absent
    # a hardlink to a symlink links the symlink itself, never its target
    assert (root / "h-abs").lstat().st_ino == (root / "abs").lstat().st_ino
    assert os.readlink(root / "h-abs") == str(untouched.path / "secret")


def test_unusable_hardlinks_are_skipped(root: Path) -> None:
    report = apply(root, tar(dir_("dir"), reg("dir/f"), link("to-dir", "dir"),
                             link("missing", "nope"), reg("me"), link("me", "me"),
                             link("dir", "dir/f")))
    skipped = {f.member: f.why for f in report.of_kind(K.HARDLINK_SKIPPED)}
    assert set(skipped) == {"to-dir", "missing", "me", "dir"}
    assert "directory" in skipped["to-dir"] and "itself" in skipped["me"]
    assert (root / "me").exists()


@pytest.mark.parametrize("name", ["a/.wh...", ".wh..", ".wh.", "a/.wh..wh.x", ".wh..."])
def test_invalid_whiteouts_are_skipped(root: Path, untouched: Host, name: str) -> None:
    report = apply(root, tar(dir_("a"), reg("a/f"), reg("top")), tar(wh(name)))
    assert (root / "a/f").exists() and (root / "top").exists()
    assert finding(report, K.WHITEOUT_INVALID, name)


def test_whiteouts_through_symlinks_stay_inside(root: Path, untouched: Host) -> None:
    lower = tar(reg("keep"), sym("up", "../../.."), sym("out", str(untouched.path)),
                sym("lnk", str(untouched.path / "dir")))
    upper = tar(wh("up/.wh.keep"), wh("out/.wh.secret"), wh(".wh.lnk"))
    report = apply(root, lower, upper)
    assert not (root / "keep").exists()  # `up` resolves to the root itself
    assert finding(report, K.WHITEOUT_THROUGH_SYMLINK, "up/.wh.keep")
    assert not (root / "lnk").is_symlink()  # the link went, not what it points to


def test_unknown_member_type_skipped_and_stream_stays_aligned(root: Path) -> None:
    odd = info("odd", b"Z", 0o644)
    odd.size = 700
    report = apply(root, tar((odd, b"z" * 700), reg("after", b"fine")))
    assert not (root / "odd").exists()
    assert (root / "after").read_bytes() == b"fine"
    assert finding(report, K.UNKNOWN_TYPE, "odd")


def test_non_directory_root_entry_skipped(root: Path, untouched: Host) -> None:
    report = apply(root, tar(sym("./", str(untouched.path)), reg("f")))
    assert root.is_dir() and not root.is_symlink() and (root / "f").exists()
    assert finding(report, K.ROOT_NOT_DIRECTORY, "./")


def test_rootfs_that_is_a_symlink_is_refused(tmp_path: Path, untouched: Host) -> None:
    link_root = tmp_path / "rootlink"
    link_root.symlink_to(untouched.path)
    with pytest.raises(ImageError, match="rootfs"):
        apply(link_root, tar(reg("secret", b"evil")))


# -- limits and broken layers ----------------------------------------------------------------


def test_gzip_bomb_stops_at_max_total_bytes(root: Path) -> None:
    bomb = tar(reg("zeros", bytes(8 << 20)), compression="gzip")
    assert len(bomb) < 100_000
    with pytest.raises(ImageError, match=r"layer 0 .*'zeros'.*max_total_bytes"):
        apply(root, bomb, limits=LayerLimits(max_total_bytes=1 << 20, max_file_bytes=1 << 30))


def test_total_bytes_counted_across_layers(root: Path) -> None:
    layer = tar(reg("f", bytes(600_000)))
    with pytest.raises(ImageError, match=r"layer 1 .*max_total_bytes"):
        apply(root, layer, layer, limits=LayerLimits(max_total_bytes=1_000_000))


@pytest.mark.parametrize(("limits", "members", "match"), [
    (LayerLimits(max_files=3), [reg(f"f{i}") for i in range(5)], r"'f3'.*max_files"),
    (LayerLimits(max_file_bytes=10), [reg("big", bytes(11))], r"'big'.*max_file_bytes"),
    (LayerLimits(max_path_depth=4), [reg("a/b/c/d/e")], r"'a/b/c/d/e'.*max_path_depth"),
    (LayerLimits(max_path_bytes=50), [reg("n" * 51)], r"max_path_bytes"),
    (LayerLimits(max_path_bytes=50), [sym("s", "t" * 51)], r"'s'.*max_path_bytes"),
])
def test_limits_raise_naming_layer_and_member(root: Path, limits: LayerLimits,
                                               members: list[Member], match: str) -> None:
    with pytest.raises(ImageError, match=r"layer 0 .*" + match):
        apply(root, tar(*members), limits=limits)


def test_tar_ending_right_after_its_last_data_is_accepted(root: Path, tmp_path: Path) -> None:
    raw = tar(reg("a", b"x" * 600), reg("b", b"abc"))
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        last = tf.getmembers()[-1]
    report = apply(root, raw[: last.offset_data + last.size])  # what umoci 0.4 insert writes
    assert (root / "b").read_bytes() == b"abc"
    assert report.of_kind(K.UNTERMINATED_ARCHIVE)
    with pytest.raises(ImageError, match=r"layer 0 .*'b'"):  # short data is still an error
        apply(tmp_path / "other", raw[: last.offset_data + 2])


@needs_root
@pytest.mark.parametrize("attrs", [{"uid": 2**40}, {"gid": 2**33}, {"devmajor": 2**40}])
def test_absurd_numbers_raise(root: Path, attrs: dict[str, int]) -> None:
    kind = tarfile.CHRTYPE if "devmajor" in attrs else tarfile.REGTYPE
    ti, _ = node("f", kind, 0o644, **attrs)
    with pytest.raises(ImageError, match=r"layer 0 .*member 'f'"):
        apply(root, tar((ti, b"" if kind == tarfile.REGTYPE else None),
                        fmt=tarfile.GNU_FORMAT))  # base-256 numbers


def test_nul_in_pax_path_raises(root: Path) -> None:
    ti, data = reg("ok")
    ti.pax_headers = {"path": "bad\x00name"}
    with pytest.raises(ImageError, match="layer 0"):
        apply(root, tar((ti, data)))


def test_corrupt_layers_raise(root: Path) -> None:
    good = tar(reg("f", bytes(100_000)), compression="gzip")
    with pytest.raises(ImageError, match="layer 0"):
        apply(root, good[: len(good) // 2])
    with pytest.raises(ImageError, match="layer 0"):
        apply(root, b"\x28\xb5\x2f\xfd" + b"garbage" * 100)
    with pytest.raises(ImageError, match="xz"):
        apply(root, b"\xfd7zXZ\x00" + bytes(100))
    with pytest.raises(ImageError, match="layer 0"):
        apply(root, b"not a tar at all" * 64)


# -- property: no layer sequence touches the host ------------------------------------------

# few names, so that layers often meet their own symlinks, whiteouts and hardlinks
COMPONENTS = ["lnk", "secret", "dir", "..", ".", "HOST", ".wh.secret", ".wh..wh..opq", ".wh.."]
TARGETS = ["HOST", "HOST/secret", "HOST/dir", "../../../host", "lnk/secret", "/", "dir", "."]


@st.composite
def hostile_member(draw: st.DrawFn) -> tuple[str, str, str]:
    depth = draw(st.integers(1, 3))
    name = "/".join(draw(st.sampled_from(COMPONENTS)) for _ in range(depth))
    if draw(st.booleans()):
        name = "/" + name
    kind = draw(st.sampled_from(["reg", "dir", "sym", "link"]))
    return kind, name, draw(st.sampled_from(TARGETS))


def build(spec: list[tuple[str, str, str]], host: Path) -> bytes:
    members: list[Member] = []
    for kind, name, target in spec:
        name = name.replace("HOST", str(host).lstrip("/"))
        target = target.replace("HOST", str(host))
        if kind == "reg":
            members.append(reg(name, b"evil"))
        elif kind == "dir":
            members.append(dir_(name))
        elif kind == "sym":
            members.append(sym(name, target))
        else:
            members.append(link(name, target))
    return tar(*members)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(hostile_member(), min_size=1, max_size=8), min_size=1, max_size=3))
def test_no_layer_sequence_touches_the_host(layers: list[list[tuple[str, str, str]]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        host = Host(Path(tmp) / "host")
        host.path.mkdir()
        (host.path / "secret").write_bytes(b"sentinel")
        (host.path / "dir").mkdir()
        before = host.snapshot()
        root = Path(tmp) / "a" / "rootfs"
        with contextlib.suppress(ImageError):
            apply(root, *(build(spec, host.path) for spec in layers))
        assert host.snapshot() == before


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
