"""apply_layers against the reference: `umoci unpack` of the same OCI image.

The image has four layers made by umoci itself from generated trees (`repack` after edits,
which umoci turns into `.wh.` whiteouts; `insert --opaque`, which makes `.wh..wh..opq`), plus
one uncompressed layer added verbatim with `umoci raw add-layer`. Our side reads the layout
itself (index.json -> manifest -> blobs/sha256) and applies the blobs; both trees must agree on
paths, types, modes, owners, sizes, contents, symlink targets, device numbers, user xattrs,
mtimes and hardlink groups.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from pycvmfs.images.layer_report import FindingKind
from pycvmfs.images.layers import apply_layers

pytestmark = [
    pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="mknod and chown need root, as umoci does"),
]

OLD = 1_500_000_000  # whole seconds: umoci's layer tars carry no sub-second times


def umoci(*args: str | Path) -> None:
    subprocess.run(["umoci", *map(str, args)], check=True, capture_output=True, timeout=60)


def write(path: Path, data: bytes, mode: int = 0o644, mtime: int = OLD,
          owner: tuple[int, int] = (0, 0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chown(path, *owner)
    path.chmod(mode)  # after chown, which clears set-id bits
    os.utime(path, (mtime, mtime))


def first_layer(rootfs: Path) -> None:
    write(rootfs / "etc/os-release", b"ID=test\n")
    write(rootfs / "etc/old.conf", b"to be deleted\n")
    write(rootfs / "bin/tool", b"\x7fELF" + bytes(5000), 0o755)
    write(rootfs / "bin/su", b"setuid", 0o4755, owner=(0, 42))
    write(rootfs / "usr/lib/libx.so.1", b"lib" * 999)
    write(rootfs / "home/user/.profile", b"PATH=/bin\n", 0o600, owner=(1000, 1000))
    os.chown(rootfs / "home/user", 1000, 1000)
    (rootfs / "home/user").chmod(0o750)
    os.setxattr(rootfs / "usr/lib/libx.so.1", "user.origin", b"layer-1")
    (rootfs / "usr/lib/libx.so").symlink_to("libx.so.1")
    (rootfs / "lib").symlink_to("usr/lib")
    (rootfs / "bin/sh").symlink_to("/bin/tool")  # absolute, as images have them
    (rootfs / "dangling").symlink_to("../../nowhere")
    os.link(rootfs / "bin/tool", rootfs / "bin/tool-hardlink")
    os.link(rootfs / "bin/tool", rootfs / "usr/lib/tool-too")
    for name in ("a", "b", "c"):
        write(rootfs / "opt/app" / name, name.encode())
    write(rootfs / "var/cache/junk/deep/file", b"junk")
    write(rootfs / "usr/share/doc/README", b"docs")
    (rootfs / "dev").mkdir()
    os.mknod(rootfs / "dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    (rootfs / "dev/null").chmod(0o666)
    os.mkfifo(rootfs / "dev/initctl", 0o600)
    (rootfs / "tmp").mkdir()
    (rootfs / "tmp").chmod(0o1777)
    for path in sorted(rootfs.rglob("*"), key=lambda p: -len(p.parts)):
        if path.is_dir() and not path.is_symlink():
            os.utime(path, (OLD - 100, OLD - 100))


def second_layer(rootfs: Path) -> None:
    (rootfs / "etc/old.conf").unlink()  # -> etc/.wh.old.conf
    shutil.rmtree(rootfs / "var/cache/junk")  # -> var/cache/.wh.junk
    write(rootfs / "etc/os-release", b"ID=test\nVERSION=2\n", mtime=OLD + 10)
    (rootfs / "usr/lib/libx.so").unlink()
    write(rootfs / "usr/lib/libx.so", b"now a file")  # symlink replaced by a file
    (rootfs / "bin/tool-hardlink").unlink()  # breaks one link of the group
    write(rootfs / "etc/new/file", b"new", 0o640)
    os.link(rootfs / "etc/new/file", rootfs / "etc/new/file-link")
    os.utime(rootfs / "etc", (OLD + 20, OLD + 20))


def plain_tar_layer() -> bytes:
    """Uncompressed, made by hand: a whiteout of a lower symlink and a new file."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        srv = tarfile.TarInfo("srv")
        srv.type, srv.mtime, srv.mode = tarfile.DIRTYPE, OLD + 40, 0o700
        tf.addfile(srv)
        for name, data in ((".wh.dangling", b""), ("srv/raw.txt", b"raw layer\n")):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.mode = len(data), OLD + 30, 0o644
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("umoci")
    layout = work / "layout"
    ref = f"{layout}:t"
    umoci("init", "--layout", layout)
    umoci("new", "--image", ref)
    # repack always diffs against the unpack it came from: one fresh bundle per layer
    umoci("unpack", "--image", ref, work / "bundle1")
    first_layer(work / "bundle1/rootfs")
    umoci("repack", "--image", ref, work / "bundle1")
    umoci("unpack", "--image", ref, work / "bundle2")
    second_layer(work / "bundle2/rootfs")
    umoci("repack", "--image", ref, work / "bundle2")
    replacement = work / "replacement"
    write(replacement / "only", b"the opaque dir holds only this")
    umoci("insert", "--image", ref, "--opaque", replacement, "/opt/app")
    umoci("insert", "--image", ref, "--whiteout", "/usr/share/doc")
    (work / "raw.tar").write_bytes(plain_tar_layer())
    umoci("raw", "add-layer", "--image", ref, work / "raw.tar")
    store_last_layer_uncompressed(layout, "t")
    return layout


def store_last_layer_uncompressed(layout: Path, tag: str) -> None:
    """umoci gzips every layer; rewrite the manifest so the last one is a plain tar blob
    (the config's diff_ids already name the uncompressed digest)."""
    index = json.loads((layout / "index.json").read_text())
    entry = next(m for m in index["manifests"]
                 if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
    manifest = json.loads(blob(layout, entry["digest"]).read_text())
    layer = manifest["layers"][-1]
    data = gzip.decompress(blob(layout, layer["digest"]).read_bytes())
    layer.update(mediaType="application/vnd.oci.image.layer.v1.tar", size=len(data),
                 digest=put_blob(layout, data))
    raw_manifest = json.dumps(manifest).encode()
    entry.update(digest=put_blob(layout, raw_manifest), size=len(raw_manifest))
    (layout / "index.json").write_text(json.dumps(index))


def put_blob(layout: Path, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blob(layout, digest).write_bytes(data)
    return digest


def layer_blobs(layout: Path, tag: str) -> tuple[list[Path], list[str]]:
    index = json.loads((layout / "index.json").read_text())
    entry = next(m for m in index["manifests"]
                 if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
    manifest = json.loads(blob(layout, entry["digest"]).read_text())
    return ([blob(layout, layer["digest"]) for layer in manifest["layers"]],
            [layer["mediaType"] for layer in manifest["layers"]])


def blob(layout: Path, digest: str) -> Path:
    algorithm, hexdigest = digest.split(":")
    return layout / "blobs" / algorithm / hexdigest


def describe(rootfs: Path) -> tuple[dict[str, tuple[object, ...]], set[frozenset[str]]]:
    """Every entry's comparable state, and the hardlink groups (paths sharing an inode)."""
    entries: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, set[str]] = {}
    for path in [rootfs, *rootfs.rglob("*")]:
        rel = path.relative_to(rootfs).as_posix()
        st = path.lstat()
        kind = stat.S_IFMT(st.st_mode)
        content: object = None
        if stat.S_ISREG(kind):
            content = hashlib.sha256(path.read_bytes()).hexdigest()
            inodes.setdefault(st.st_ino, set()).add(rel)
        elif stat.S_ISLNK(kind):
            content = os.readlink(path)
        elif stat.S_ISCHR(kind) or stat.S_ISBLK(kind):
            content = (os.major(st.st_rdev), os.minor(st.st_rdev))
        xattrs = {} if stat.S_ISLNK(kind) else {
            n: os.getxattr(path, n, follow_symlinks=False)
            for n in os.listxattr(path, follow_symlinks=False) if n.startswith("user.")}
        mode = None if stat.S_ISLNK(kind) else stat.S_IMODE(st.st_mode)
        size = st.st_size if stat.S_ISREG(kind) or stat.S_ISLNK(kind) else None
        entries[rel] = (kind, mode, st.st_uid, st.st_gid, size, content, sorted(xattrs.items()),
                        st.st_mtime_ns)
    groups = {frozenset(paths) for paths in inodes.values() if len(paths) > 1}
    return entries, groups


def test_layers_match_umoci_unpack(image: Path, tmp_path: Path) -> None:
    umoci("unpack", "--image", f"{image}:t", tmp_path / "reference")
    blobs, media_types = layer_blobs(image, "t")
    assert len(blobs) == 5
    assert media_types[-1].endswith("tar")  # the raw layer went in uncompressed

    report = apply_layers(blobs, tmp_path / "ours")

    reference, reference_links = describe(tmp_path / "reference/rootfs")
    ours, our_links = describe(tmp_path / "ours")
    if ours != reference:
        diff = {k: (reference.get(k), ours.get(k)) for k in reference.keys() | ours.keys()
                if reference.get(k) != ours.get(k)}
        pytest.fail(f"trees differ (reference, ours): {diff}")
    assert our_links == reference_links
    assert frozenset({"bin/tool", "usr/lib/tool-too"}) in our_links

    # the edits really produced the OCI constructs under test
    assert [layer.compression for layer in report.layers] == ["gzip"] * 4 + ["plain"]
    assert report.layers[1].whiteouts >= 2 and report.layers[2].opaque == 1
    assert report.layers[3].whiteouts == 1 and report.layers[4].whiteouts == 1
    assert sorted(os.listdir(tmp_path / "ours/opt/app")) == ["only"]
    assert not (tmp_path / "ours/usr/share/doc").exists()
    found = {(f.kind, f.path) for f in report.findings}
    assert (FindingKind.SETID_KEPT, "bin/su") in found
    assert (FindingKind.SYMLINK_ESCAPES, "dangling") in found
    assert (FindingKind.SETID_KEPT, "tmp") not in found  # sticky is not set-id
    assert (FindingKind.UNTERMINATED_ARCHIVE, "") in found  # umoci insert's tar has no end
