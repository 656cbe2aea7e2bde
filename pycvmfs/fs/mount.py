"""Mount lifecycle, once for both adapters: choose the backend, serve, unmount.

`PYCVMFS_FUSE=pyfuse3,mfusepy` (the default order) picks the first binding that
imports; the reasons others failed are kept for error messages.
"""

from __future__ import annotations

import importlib
import os
import subprocess
from types import ModuleType

from pycvmfs.errors import ConfigError
from pycvmfs.fs.vfs import RepositoryVFS

BACKENDS = ("pyfuse3", "mfusepy")
DEFAULT_KCACHE_TIMEOUT_S = 60.0  # CVMFS_KCACHE_TIMEOUT default


def load_backend(preference: str | None = None) -> tuple[str, ModuleType]:
    """The adapter module of the first importable binding in the preference list."""
    order = (preference or os.environ.get("PYCVMFS_FUSE") or ",".join(BACKENDS)).split(",")
    reasons = []
    for name in (n.strip() for n in order if n.strip()):
        if name not in BACKENDS:
            raise ConfigError(f"unknown FUSE backend {name!r} (choose from {', '.join(BACKENDS)})")
        try:
            return name, importlib.import_module(f"pycvmfs.fs.adapter_{name}")
        except Exception as exc:  # mfusepy raises OSError when libfuse is missing
            reasons.append(f"{name}: {exc}")
    raise ConfigError("no usable FUSE binding: " + "; ".join(reasons))


def serve(vfs: RepositoryVFS, mountpoint: str, *, backend: str | None = None,
          kcache_timeout_s: float = DEFAULT_KCACHE_TIMEOUT_S) -> None:
    """Mount `vfs` at `mountpoint` and serve requests until unmounted (blocks)."""
    name, adapter = load_backend(backend)
    fsname = f"cvmfs2#{vfs.repository.fqrn}"
    if name == "pyfuse3":
        adapter.serve(vfs, mountpoint, fsname=fsname, entry_timeout=kcache_timeout_s)
    else:
        adapter.serve(vfs, mountpoint, fsname=fsname,
                      options={"entry_timeout": kcache_timeout_s,
                               "attr_timeout": kcache_timeout_s, "nodev": True})


def unmount(mountpoint: str, *, lazy: bool = False) -> None:
    """`fusermount3 -u` (works for ordinary users), falling back to umount as root."""
    for command in (["fusermount3", "-u"] + (["-z"] if lazy else []),
                    ["fusermount", "-u"] + (["-z"] if lazy else []),
                    ["umount"] + (["-l"] if lazy else [])):
        try:
            result = subprocess.run([*command, mountpoint], capture_output=True, text=True)
        except FileNotFoundError:
            continue
        if result.returncode == 0:
            return
    raise ConfigError(f"cannot unmount {mountpoint}")


def main(argv: list[str] | None = None) -> int:
    """Mount a storage directory or URL directly, without configuration or cache (tests,
    publishers checking their output): `python -m pycvmfs.fs.mount REPO_URL_OR_STORAGE
    MOUNTPOINT --fqrn NAME --keys K [--tag T] [--backend B]`, in the foreground."""
    import argparse
    from pathlib import Path

    from pycvmfs.repository.repository import Repository
    from pycvmfs.repository.source import open_source
    from pycvmfs.repository.trust import load_public_keys

    parser = argparse.ArgumentParser(prog="python -m pycvmfs.fs.mount")
    parser.add_argument("repo")
    parser.add_argument("mountpoint")
    parser.add_argument("--keys", action="append", type=Path, required=True)
    parser.add_argument("--fqrn", required=True)
    parser.add_argument("--tag")
    parser.add_argument("--backend")
    args = parser.parse_args(argv)
    source = open_source(args.repo)
    with Repository.open(source, args.fqrn, load_public_keys(args.keys), tag=args.tag) as repo:
        serve(RepositoryVFS(repo), args.mountpoint, backend=args.backend)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
