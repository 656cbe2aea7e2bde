"""Build the bundled demo repository `testdata/repo/` reproducibly.

The source trees are generated here (git keeps neither hardlinks, xattrs, fifos nor
mtimes), with fixed contents, modes, mtimes and owner, and published with fixed
timestamps (SOURCE_DATE_EPOCH) and the committed test keys in `testdata/keys/`.
RSA PKCS#1 v1.5 signatures are deterministic, so running this twice gives
byte-identical repositories.

Two revisions: `v1` and `v2` (named tags), with a nested catalog from a
`.cvmfscatalog` marker and one from `.cvmfsdirtab`, a chunked file (small chunk
sizes), hardlinks, symlinks (one with `$(VAR:-default)`), a stored xattr, a fifo.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

FQRN = "demo.pycvmfs.org"
HERE = Path(__file__).resolve().parent
KEYS = HERE / "keys"
REPO = HERE / "repo"
REV1_EPOCH = 1767225600  # 2026-01-01T00:00:00Z
REV2_EPOCH = 1767312000  # 2026-01-02T00:00:00Z
WHITELIST_DAYS = 3650  # the demo must stay mountable for years
CHUNK_SIZES = "64K,128K,256K"  # small, so the 1.5 MB file is chunked


def pseudo_random(seed: str, size: int) -> bytes:
    """Deterministic bytes that do not depend on any library version."""
    return hashlib.shake_256(seed.encode()).digest(size)


def write(root: Path, rel: str, data: bytes | str, mode: int = 0o644) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)
    return path


def build_tree(root: Path, revision: int) -> None:
    readme = "pycvmfs demo repository\n" + ("revision 2: updated\n" if revision > 1 else "")
    write(root, "README.txt", readme)
    write(root, "bin/hello.sh", "#!/bin/sh\necho 'hello from the demo repository'\n", 0o755)
    guide = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(200))
    write(root, "docs/guide.txt", guide)
    os.link(root / "docs/guide.txt", root / "docs/guide-hardlink.txt")
    notes = write(root, "docs/notes.txt", "notes carry a stored xattr\n")
    os.setxattr(notes, "user.author", b"pycvmfs")
    write(root, "docs/empty.txt", b"")
    write(root, "data/.cvmfscatalog", b"")
    write(root, "data/random.bin", pseudo_random("random.bin", 1_500_000))
    write(root, "data/same-as-guide.txt", guide)  # deduplicated with docs/guide.txt
    (root / "links").mkdir()
    os.symlink("../docs/guide.txt", root / "links/guide")
    os.symlink("$(DEMO_ARCH:-x86_64)/lib", root / "links/arch-lib")
    os.symlink("/cvmfs/demo.pycvmfs.org/README.txt", root / "links/absolute")
    (root / "special").mkdir()
    os.mkfifo(root / "special/fifo", 0o644)
    write(root, ".cvmfsdirtab", "# every release is its own catalog\n/software/*\n")
    write(root, "software/v1/bin/tool", "#!/bin/sh\necho tool v1\n", 0o755)
    write(root, "software/v1/lib/libdemo.txt", pseudo_random("lib-v1", 20_000))
    if revision > 1:
        write(root, "software/v2/bin/tool", "#!/bin/sh\necho tool v2\n", 0o755)
        write(root, "software/v2/lib/libdemo.txt", pseudo_random("lib-v2", 20_000))
        os.symlink("v2", root / "software/current")
    else:
        os.symlink("v1", root / "software/current")


CHANGED_IN_REV2 = ("", "README.txt", "software", "software/current", "software/v2",
                   "software/v2/bin", "software/v2/bin/tool", "software/v2/lib",
                   "software/v2/lib/libdemo.txt")


def fix_times(root: Path, revision: int) -> None:
    """Fixed mtimes: revision 1's everywhere, revision 2's on what revision 2 changed
    (so unchanged nested catalogs are reused, as in a real second publish)."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), (REV1_EPOCH, REV1_EPOCH),
                     follow_symlinks=False)
    os.utime(root, (REV1_EPOCH, REV1_EPOCH))
    if revision > 1:
        for rel in CHANGED_IN_REV2:
            os.utime(root / rel, (REV2_EPOCH, REV2_EPOCH), follow_symlinks=False)


def pycvmfs(*args: str, epoch: int) -> None:
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(epoch))
    subprocess.run([sys.executable, "-m", "pycvmfs", *args], check=True, env=env,
                   cwd=HERE.parent)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent))
    from pycvmfs.publisher.keys import load_keys
    from pycvmfs.publisher.storage import LocalStorage
    from pycvmfs.publisher.whitelist_sign import write_whitelist

    if args.output.exists():
        shutil.rmtree(args.output)
    storage = LocalStorage(args.output)
    storage.create_layout()
    write_whitelist(storage, FQRN, load_keys(FQRN, KEYS), WHITELIST_DAYS,
                    now=datetime.fromtimestamp(REV1_EPOCH, UTC))
    with tempfile.TemporaryDirectory() as tmp:
        for revision, epoch, tag in ((1, REV1_EPOCH, "v1"), (2, REV2_EPOCH, "v2")):
            src = Path(tmp) / f"rev{revision}"
            src.mkdir()
            build_tree(src, revision)
            fix_times(src, revision)
            pycvmfs("publish", str(src), "--repo", FQRN, "--storage", str(args.output),
                    "--keys-dir", str(KEYS), "--tag", tag, "--chunk-sizes", CHUNK_SIZES,
                    "--owner", "0:0", "--ttl", "60", epoch=epoch)
    for leftover in (".cvmfs_publish.lock",):
        (args.output / leftover).unlink(missing_ok=True)
    shutil.rmtree(args.output / "data" / "txn", ignore_errors=True)
    for empty in [d for d in (args.output / "data").iterdir() if not any(d.iterdir())]:
        empty.rmdir()  # git keeps no empty directories: make the bundled copy match a clone
    print(f"demo repository {FQRN} written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
