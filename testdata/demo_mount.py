"""`make demo`, second half: serve `testdata/repo` over HTTP on 127.0.0.1 like a Stratum-1,
mount it with `pycvmfs mount`, show what a user sees, and unmount.

Uses Python's own HTTP server (no nginx needed) and a scratch cache under --workdir.
Skips with a message, exit 0, where FUSE is not usable (no /dev/fuse, or no permission).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FQRN = "demo.pycvmfs.org"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib API
        pass


def _run(*command: str) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/pycvmfs-demo"))
    args = parser.parse_args()
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        print("== skipping the mount demo: /dev/fuse is not usable here")
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
