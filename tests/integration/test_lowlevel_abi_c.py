"""The lowlevel adapter's ctypes declarations (`_libfuse3`) against the C compiler: sizes,
offsets and bitfield positions of every structure it shares with libfuse3 and glibc (the
ABI guard), for the version the headers declare. Compiles a small C program against the
installed fuse3 headers, or those of the libfuse that `PYCVMFS_LIBFUSE3` points at (found
in an `include/fuse3` above the library); skipped without `cc` or without the headers
(the packers: tests/unit/test_lowlevel_abi.py)."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pycvmfs.fs import _libfuse3 as ll


def header_dirs() -> list[Path]:
    """The headers of the library `PYCVMFS_LIBFUSE3` names, else the installed ones."""
    library = os.environ.get(ll.LIBRARY_ENV)
    if library and os.path.isabs(library):
        return [parent / "include" / "fuse3" for parent in Path(library).parents]
    return [Path("/usr/include/fuse3"), Path("/usr/local/include/fuse3")]


STAT_FIELDS = ("st_dev", "st_ino", "st_nlink", "st_mode", "st_uid", "st_gid", "st_rdev",
               "st_size", "st_blksize", "st_blocks", "st_atim", "st_mtim", "st_ctim")
STATVFS_FIELDS = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                  "f_ffree", "f_favail", "f_fsid", "f_flag", "f_namemax")
FI_FIELDS = ("flags", "fh", "lock_owner", "poll_events")
CONN_FIELDS = ("proto_major", "max_readahead", "capable", "want", "max_background",
               "time_gran")
STRUCTS: dict[str, tuple[str, Any, tuple[str, ...]]] = {
    # key: (C type, ctypes class, fields compared by offset)
    "stat": ("struct stat", ll.Stat, STAT_FIELDS),
    "statvfs": ("struct statvfs", ll.Statvfs, STATVFS_FIELDS),
    "entry": ("struct fuse_entry_param", ll.EntryParam,
              ("ino", "generation", "attr", "attr_timeout", "entry_timeout")),
    "fi": ("struct fuse_file_info", ll.FileInfo, FI_FIELDS),
    "conn": ("struct fuse_conn_info", ll.ConnInfo, (*CONN_FIELDS, "reserved")),
    "args": ("struct fuse_args", ll.FuseArgs, ("argc", "argv", "allocated")),
    "forget": ("struct fuse_forget_data", ll.ForgetData, ("ino", "nlookup")),
    "ctx": ("struct fuse_ctx", ll.FuseCtx, ("uid", "gid", "pid", "umask")),
    "loopv1": ("LOOP_V1", ll.LoopConfigV1, ("clone_fd", "max_idle_threads")),
    "ops": ("struct fuse_lowlevel_ops", ll.LowlevelOps, ll.OPS_ORDER),
}
# 3.17 and later: the grown fuse_file_info, fuse_conn_info with 64-bit capabilities,
# the version passed to fuse_session_new_versioned
STRUCTS_317: dict[str, tuple[str, Any, tuple[str, ...]]] = {
    "fi": ("struct fuse_file_info", ll.FileInfo,
           (*FI_FIELDS, "backing_id", "compat_flags", "reserved")),
    "conn": ("struct fuse_conn_info", ll.ConnInfo317,
             (*CONN_FIELDS, "max_backing_stack_depth", "capable_ext", "want_ext")),
    "version": ("struct libfuse_version", ll.LibfuseVersion,
                ("major", "minor", "hotfix", "padding")),
}
BITS = {"direct_io": ll.FI_DIRECT_IO, "keep_cache": ll.FI_KEEP_CACHE}
CAPS = ("FUSE_CAP_READDIRPLUS", "FUSE_CAP_READDIRPLUS_AUTO", "FUSE_CAP_CACHE_SYMLINKS",
        "FUSE_CAP_SPLICE_WRITE", "FUSE_CAP_NO_OPEN_SUPPORT")


def structs(version: int) -> dict[str, tuple[str, Any, tuple[str, ...]]]:
    return {**STRUCTS, **STRUCTS_317} if version >= 317 else STRUCTS


def _print_layouts(table: dict[str, tuple[str, Any, tuple[str, ...]]]) -> list[str]:
    lines = []
    for key, (ctype, _, fields) in table.items():
        lines.append(f'printf("{key}.size %zu\\n", sizeof({ctype}));')
        for field in fields:
            lines.append(f'printf("{key}.{field} %zu\\n", offsetof({ctype}, {field}));')
    return lines


def c_program() -> str:
    lines = ["#define FUSE_USE_VERSION 35", "#include <fuse_lowlevel.h>", "#include <stdio.h>",
             "#include <stddef.h>", "#include <string.h>", "#include <stdint.h>",
             # API 3.5: `struct fuse_loop_config` is the v1 layout that the lowlevel adapter
             # passes to fuse_session_loop_mt_32 before 3.12
             "#define LOOP_V1 struct fuse_loop_config",
             "int main(void) {", 'printf("version %d\\n", FUSE_VERSION);']
    lines += _print_layouts(STRUCTS)
    lines += ["#if FUSE_VERSION >= 317", *_print_layouts(STRUCTS_317), "#endif"]
    for bit in [*BITS, "cache_readdir"]:
        lines += ["{ struct fuse_file_info fi; uint32_t w; memset(&fi, 0, sizeof fi);",
                  f"fi.{bit} = 1; memcpy(&w, (char *)&fi + 4, 4);",
                  f'printf("bit.{bit} %u\\n", w); }}']
    lines += [f'printf("cap.{cap} %u\\n", (unsigned){cap});' for cap in CAPS]
    lines += ["return 0; }"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    compiler = shutil.which("cc") or shutil.which("gcc")
    headers = next((d for d in header_dirs() if (d / "fuse_lowlevel.h").exists()), None)
    if compiler is None or headers is None:
        pytest.skip("needs a C compiler and the fuse3 headers")
    base = tmp_path_factory.mktemp("abi")
    (base / "abi.c").write_text(c_program())
    build = subprocess.run([compiler, "-D_FILE_OFFSET_BITS=64", f"-I{headers}", "-o",
                            str(base / "abi"), str(base / "abi.c")], capture_output=True,
                           text=True)
    assert build.returncode == 0, build.stderr
    out = subprocess.run([str(base / "abi")], check=True, capture_output=True, text=True)
    values = {key: int(value) for key, value in (line.split() for line in out.stdout.splitlines())}
    if values["version"] not in ll.SUPPORTED_VERSIONS:
        pytest.skip(f"installed headers are libfuse {values['version']}, not declared here")
    return values


@pytest.mark.parametrize("key", [*STRUCTS, "version"])
def test_struct_layout_matches_c(compiled: dict[str, int], key: str) -> None:
    version = compiled["version"]
    if key not in structs(version):
        pytest.skip(f"no {key} before libfuse 3.17")
    _, cls, fields = structs(version)[key]
    size = ll.file_info_size(version) if key == "fi" else ctypes.sizeof(cls)
    declared = {f"{key}.{f}": getattr(cls, f).offset for f in fields}
    if key == "ops" and version >= 317:  # later members appended: the prefix is passed
        assert size < compiled["ops.size"]
    else:
        declared[f"{key}.size"] = size
    assert declared == {name: compiled[name] for name in declared}
    if key == "conn":
        assert ll.conn_info_type(version) is cls


def test_the_library_is_the_one_the_headers_describe(compiled: dict[str, int]) -> None:
    try:
        lib = ll.load()
    except ImportError as exc:
        pytest.skip(f"no usable libfuse3: {exc}")
    assert lib.version == compiled["version"]


def test_file_info_bits_match_c(compiled: dict[str, int]) -> None:
    assert compiled["bit.direct_io"] == ll.FI_DIRECT_IO
    assert compiled["bit.keep_cache"] == ll.FI_KEEP_CACHE
    assert compiled["bit.cache_readdir"] == ll.fi_cache_readdir_bit(compiled["version"])
    assert compiled["fi.flags"] == 0 and ll.FileInfo.bits.offset == 4


def test_capability_bits_match_c(compiled: dict[str, int]) -> None:
    for cap in CAPS:
        assert compiled[f"cap.{cap}"] == getattr(ll, cap), cap
