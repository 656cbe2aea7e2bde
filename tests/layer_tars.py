"""Layers built by `tarfile` for the apply_layers tests (tests/unit/images/test_layers*.py),
and the host sentinel: a directory beside the rootfs that no layer may touch (the fixtures
`host`, `root` and `untouched`, imported by the test modules)."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from pycvmfs.images.layer_members import LayerLimits
from pycvmfs.images.layer_report import FindingKind, LayerReport
from pycvmfs.images.layers import apply_layers

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
