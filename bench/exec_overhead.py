"""What `pycvmfs exec REPO -- true` costs next to `pycvmfs mount` + `pycvmfs umount` of the
same repository, as an ordinary user (`nobody`) with a warm cache: medians of N runs each.

Run as root (it sets up the user's side as tests/integration/test_exec.py does: /dev/fuse
0666 for the run and restored, the bundled demo repository served by a local nginx):

    python bench/exec_overhead.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import stat
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.test_client_unprivileged import SYSTEM_PYTHON, USER, user_env  # noqa: E402
from tests.mounting import DEMO_FQRN, DEMO_KEY, DEMO_REPO, User  # noqa: E402
from tests.servers import Nginx, shared_scratch  # noqa: E402

FUSE = "/dev/fuse"


def _timed(command: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.monotonic()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120)
    elapsed = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr.strip()}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    entry = pwd.getpwnam(USER)
    user = User(USER, entry.pw_uid, entry.pw_gid)
    original = stat.S_IMODE(os.stat(FUSE).st_mode)
    os.chmod(FUSE, 0o666)
    try:
        with shared_scratch("pycvmfs-bench-exec-") as base, Nginx() as server:
            home, config_root = base / "home", base / "etc-cvmfs"
            (home / "mnt").mkdir(parents=True)
            for path in (home, home / "mnt"):
                os.chown(path, user.uid, user.gid)
            (config_root / "config.d").mkdir(parents=True)
            (config_root / "keys").mkdir()
            shutil.copy(DEMO_KEY, config_root / "keys" / DEMO_KEY.name)
            url = server.publish(f"cvmfs/{DEMO_FQRN}", DEMO_REPO)
            (config_root / "config.d" / f"{DEMO_FQRN}.conf").write_text(
                f"CVMFS_SERVER_URL={url.rsplit('/', 1)[0]}/@fqrn@\nCVMFS_HTTP_PROXY=DIRECT\n")
            for path in [config_root, *config_root.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)
            env = user_env(user, home, config_root)
            pycvmfs = [*user.prefix, SYSTEM_PYTHON, "-m", "pycvmfs"]
            exec_true = [*pycvmfs, "exec", DEMO_FQRN, "--", "true"]
            mount = [*pycvmfs, "mount", DEMO_FQRN, str(home / "mnt")]
            umount = [*pycvmfs, "umount", str(home / "mnt")]
            _timed(exec_true, env, home)  # warms the cache
            execs, mounts, alone = [], [], []
            for _ in range(args.runs):
                execs.append(_timed(exec_true, env, home))
                alone.append(_timed(mount, env, home))
                mounts.append(alone[-1] + _timed(umount, env, home))
    finally:
        os.chmod(FUSE, original)
    exec_s, mount_s = statistics.median(execs), statistics.median(mounts)
    for name, times in (("exec REPO -- true", execs), ("mount + umount", mounts)):
        print(f"{name + ':':24} median {statistics.median(times):.3f} s  "
              f"({' '.join(f'{t:.3f}' for t in times)})")
    alone_s = statistics.median(alone)
    print(f"mount alone:             median {alone_s:.3f} s")
    print(f"ratio exec / (mount+umount): {exec_s / mount_s:.2f}, exec / mount alone: "
          f"{exec_s / alone_s:.2f}  "
          f"(load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
