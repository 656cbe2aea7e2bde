"""`make demo`, second half: serve `testdata/repo` over HTTP on 127.0.0.1 like a Stratum-1,
mount it with `pycvmfs mount`, show what a user sees, and unmount.

Uses Python's own HTTP server (no nginx needed) and a scratch cache under --workdir.
Needs no compiler and no FUSE headers: the default backend loads libfuse3.so through ctypes
(mfusepy, a pure wheel, is the fallback). Where a mount cannot work it says why in one line
and exits 0: no /dev/fuse, /dev/fuse not readable and writable, no libfuse library, or (for
an ordinary user) no setuid fusermount3.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

from pycvmfs.errors import ConfigError
from pycvmfs.fs.mount import load_backend

ROOT = Path(__file__).resolve().parent.parent
FQRN = "demo.pycvmfs.org"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib API
        pass


def _run(*command: str) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def why_no_mount() -> str | None:
    """What stops a FUSE mount here, with the fix; None when nothing does."""
    if not os.path.exists("/dev/fuse"):
        return "there is no /dev/fuse (no FUSE in this kernel or container)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable and writable by you (as root: chmod 666 /dev/fuse)"
    try:
        load_backend()
    except ConfigError:
        return ("no usable libfuse library (libfuse3.so.3 or .4, or libfuse.so.2) was found "
                "(apt-get install fuse3)")
    if os.geteuid() != 0:
        fusermount = shutil.which("fusermount3")
        if fusermount is None:
            return ("an ordinary user mounts through fusermount3, which is not installed "
                    "(apt-get install fuse3)")
        if not os.stat(fusermount).st_mode & stat.S_ISUID:
            return f"{fusermount} is not setuid root (as root: chmod u+s {fusermount})"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/pycvmfs-demo"))
    args = parser.parse_args()
    why = why_no_mount()
    if why is not None:
        print(f"== skipping the mount demo: {why}")
        return 0
    docroot = args.workdir / "www"
    shutil.rmtree(docroot, ignore_errors=True)
    (docroot / "cvmfs").mkdir(parents=True)
    (docroot / "cvmfs" / FQRN).symlink_to(ROOT / "testdata" / "repo")
    mnt = args.workdir / "mnt"
    mnt.mkdir(parents=True, exist_ok=True)
    handler = functools.partial(_QuietHandler, directory=str(docroot))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/cvmfs/@fqrn@"
    pycvmfs = [sys.executable, "-m", "pycvmfs"]
    options = ",".join([f"CVMFS_SERVER_URL={url}", "CVMFS_HTTP_PROXY=DIRECT",
                        f"CVMFS_PUBLIC_KEY={ROOT / 'testdata' / 'keys' / f'{FQRN}.pub'}",
                        f"CVMFS_CACHE_BASE={args.workdir / 'cache'}"])
    print(f"== mounting {FQRN} (served from testdata/repo on {url.split('/cvmfs')[0]})")
    try:
        _run(*pycvmfs, "mount", FQRN, str(mnt), "-o", options)
        try:
            _run("ls", "-l", str(mnt))
            _run("cat", str(mnt / "README.txt"))
            for name in ("user.revision", "user.root_hash", "user.host", "user.ndownload"):
                print(f"{name} = {os.getxattr(mnt, name).decode()}")
            data = (mnt / "data" / "random.bin").read_bytes()
            chunks = os.getxattr(mnt / "data" / "random.bin", "user.chunks").decode()
            print(f"data/random.bin: {len(data)} bytes read in {chunks} verified chunks")
        finally:
            _run(*pycvmfs, "umount", str(mnt))
    finally:
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
