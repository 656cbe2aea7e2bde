"""apply_layers with hostile tars, limits and broken layers, and a property: no layer sequence
touches the host. Every hostile case checks that a sentinel directory outside the rootfs is
byte-for-byte and inode-for-inode untouched, and that the report names the case."""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pycvmfs.errors import ImageError
from pycvmfs.images.layer_members import LayerLimits, normalise_member_name
from tests.layer_tars import (
    Host,
    K,
    Member,
    apply,
    dir_,
    finding,
    info,
    kinds,
    link,
    needs_root,
    node,
    reg,
    sym,
    tar,
    wh,
)

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
