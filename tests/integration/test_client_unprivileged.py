"""An ordinary user mounts and reads: `pycvmfs mount` without root, through `fusermount3`.

What it needs, and what the test arranges (root sets up, everything else runs as `nobody`):
- `/dev/fuse` open to the user: HPC nodes ship it 0666; here it is 0600, so the test
  chmods it to 0666 and always restores the original mode;
- `fusermount3` setuid root (it performs the mount for the user); `user_allow_other` in
  /etc/fuse.conf is not needed (nothing asks for allow_other);
- a Python the user can run: the project's interpreter usually lives under /root (0700), so
  Debian's /usr/bin/python3 (same minor version, so the compiled wheels load) runs with
  PYTHONPATH=<repo root>:<the running interpreter's site-packages>, all world-readable;
- a configuration the user can read (a configuration root with `config.d/<fqrn>.conf` and
  the public key in its `keys/`), and no cache setting: the cache goes to the user's
  default, `$HOME/.cache/pycvmfs`.
Anything missing skips the test with the reason.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycvmfs.fs.mount import BACKENDS
from tests.mounting import (
    DEMO_FQRN,
    DEMO_KEY,
    DEMO_REPO,
    ROOT,
    User,
    backend_params,
    cli_mount,
    fuse_open_to_all_users,
    is_mounted,
    mountinfo,
)
from tests.servers import Nginx, nginx_binary, shared_scratch

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0,
                       reason="needs /dev/fuse and root (to set up the user's side)"),
    pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed"),
]

USER = "nobody"
SYSTEM_PYTHON = "/usr/bin/python3"
FQRN = DEMO_FQRN
README_END = "revision 2: updated\n"
ALLOW_SYS_ADMIN = "/sys/module/fuse/parameters/allow_sys_admin_access"

PROBE = """\
import json, os, sys
mnt = sys.argv[1]
with open(os.path.join(mnt, "README.txt")) as handle:
    readme = handle.read()
with open(os.path.join(mnt, "data", "random.bin"), "rb") as handle:
    random_size = len(handle.read())
print(json.dumps({
    "euid": os.geteuid(),
    "readme": readme,
    "listing": sorted(os.listdir(mnt)),
    "docs": sorted(os.listdir(os.path.join(mnt, "docs"))),
    "random_size": random_size,
    "fqrn": os.getxattr(mnt, "user.fqrn").decode(),
    "author": os.getxattr(os.path.join(mnt, "docs", "notes.txt"), "user.author").decode(),
    "uids": [os.stat(mnt).st_uid, os.lstat(os.path.join(mnt, "README.txt")).st_uid,
             os.lstat(os.path.join(mnt, "docs")).st_uid,
             os.lstat(os.path.join(mnt, "links", "guide")).st_uid],
}))
"""




def readable_by_others(path: Path) -> bool:
    """Every directory from / down to `path` can be traversed by others, `path` read."""
    path = path.resolve()
    try:
        chain = [os.stat(p).st_mode for p in path.parents] + [os.stat(path).st_mode]
    except OSError:
        return False
    wanted = 0o005 if stat.S_ISDIR(chain[-1]) else 0o004
    return all(mode & 0o001 for mode in chain[:-1]) and chain[-1] & wanted == wanted


def python_path() -> list[Path]:
    """The repository (pycvmfs itself) and the running interpreter's site-packages."""
    paths = [ROOT]
    for key in ("purelib", "platlib"):
        site = Path(sysconfig.get_paths()[key])
        if site not in paths:
            paths.append(site)
    return paths


def missing_requirement() -> str | None:
    """Why the test cannot run here, or None."""
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return f"no user {USER!r}"
    fusermount = shutil.which("fusermount3")
    if fusermount is None:
        return "fusermount3 is not installed (apt install fuse3)"
    info = os.stat(fusermount)
    if not (info.st_mode & stat.S_ISUID and info.st_uid == 0):
        return f"{fusermount} is not setuid root"
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} is missing"
    version = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print(*sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30).stdout.split()
    if version != [str(part) for part in sys.version_info[:2]]:
        return (f"{SYSTEM_PYTHON} is Python {'.'.join(version)}, the tests run "
                f"{sys.version_info[0]}.{sys.version_info[1]}: the compiled wheels would not load")
    for path in [*python_path(), DEMO_REPO, DEMO_KEY]:
        if not readable_by_others(path):
            return (f"{path} is not readable by other users (e.g. a Python under /root, mode "
                    "0700): run the tests from a virtualenv outside /root")
    return None


def ordinary_user() -> User:
    """The ordinary user these tests run as (the test is skipped if it cannot be)."""
    reason = missing_requirement()
    if reason is not None:
        pytest.skip(reason)
    entry = pwd.getpwnam(USER)
    return User(USER, entry.pw_uid, entry.pw_gid)


@pytest.fixture
def user() -> User:
    return ordinary_user()


@pytest.fixture
def fuse_open_to_all(user: User) -> Iterator[None]:
    """/dev/fuse open to every user for the test (`fuse_open_to_all_users`)."""
    with fuse_open_to_all_users():
        yield


@pytest.fixture
def area(user: User) -> Iterator[Path]:
    """A world-traversable scratch directory (pytest's tmp_path is 0700 root)."""
    with shared_scratch("pycvmfs-user-") as base:
        yield base


def user_env(user: User, home: Path, config_root: Path) -> dict[str, str]:
    """A clean environment for the user: nothing of root's (no HOME=/root, no pyenv)."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "USER": user.name,
        "LANG": "C.UTF-8",
        "PYTHONPATH": os.pathsep.join(str(path) for path in python_path()),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYCVMFS_CONFIG_ROOT": str(config_root),
    }


def root_may_enter_fuse_mounts() -> bool:
    """The fuse module's `allow_sys_admin_access` (Linux >= 6.2) lets root into every mount."""
    try:
        return Path(ALLOW_SYS_ADMIN).read_text().strip() == "Y"
    except OSError:
        return False


def as_user(user: User, env: dict[str, str], cwd: Path,
            *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*user.prefix, *command], env=env, cwd=cwd, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=120)


@pytest.mark.parametrize("backend", backend_params(*BACKENDS))
@pytest.mark.usefixtures("fuse_open_to_all")
def test_ordinary_user_mounts_and_reads(user: User, area: Path, backend: str) -> None:
    home, mnt, config_root = area / "home", area / "mnt", area / "etc-cvmfs"
    for directory in (home, mnt):
        directory.mkdir()
        os.chown(directory, user.uid, user.gid)
    (config_root / "config.d").mkdir(parents=True)
    (config_root / "keys").mkdir()
    shutil.copy(DEMO_KEY, config_root / "keys" / DEMO_KEY.name)  # found via CVMFS_KEYS_DIR
    for path in [config_root, *config_root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    env = user_env(user, home, config_root)
    probe = as_user(user, env, home, SYSTEM_PYTHON, "-c",
                    "import os, pycvmfs.cli.main; print(os.geteuid())")
    if probe.returncode != 0 and ("Permission denied" in probe.stderr
                                  or "ModuleNotFoundError" in probe.stderr):
        pytest.skip(f"{user.name} cannot import pycvmfs with {SYSTEM_PYTHON}: "
                    f"{probe.stderr.strip().splitlines()[-1]}")
    assert (probe.returncode, probe.stdout.strip()) == (0, str(user.uid)), probe.stderr

    with Nginx() as server:
        url = server.publish(f"cvmfs/{FQRN}", DEMO_REPO)
        (config_root / "config.d" / f"{FQRN}.conf").write_text(
            f"CVMFS_SERVER_URL={url.rsplit('/', 1)[0]}/@fqrn@\n"
            "CVMFS_HTTP_PROXY=DIRECT\nCVMFS_MAX_RETRIES=1\nCVMFS_TIMEOUT_DIRECT=5\n")
        (config_root / "config.d" / f"{FQRN}.conf").chmod(0o644)
        with cli_mount(FQRN, mnt, env=env, backend=backend, python=SYSTEM_PYTHON,
                       prefix=user.prefix, cwd=home) as mount:
            fields = mountinfo()[str(mnt)]
            options = fields[-1].split(",")
            assert f"user_id={user.uid}" in options  # mounted for the user (fusermount3)
            if not root_may_enter_fuse_mounts():  # no allow_other: the user's mount only
                with pytest.raises(PermissionError):
                    os.stat(mnt / "README.txt")
            done = as_user(user, env, home, SYSTEM_PYTHON, "-c", PROBE, str(mnt))
            assert done.returncode == 0, done.stderr
            seen = json.loads(done.stdout)
            assert seen["euid"] == user.uid
            assert seen["readme"].endswith(README_END)
            assert seen["listing"] == [".cvmfsdirtab", "README.txt", "bin", "data", "docs",
                                       "links", "software", "special"]
            assert "notes.txt" in seen["docs"]
            assert seen["random_size"] == 1_500_000
            assert seen["fqrn"] == FQRN
            assert seen["author"] == "pycvmfs"
            assert seen["uids"] == [user.uid] * 4  # CVMFS_CLAIM_OWNERSHIP=yes (default)
            cache = home / ".cache" / "pycvmfs" / "shared"  # the default for ordinary users
            assert cache.is_dir() and cache.stat().st_uid == user.uid
            status = as_user(user, env, home, SYSTEM_PYTHON, "-m", "pycvmfs", "status",
                             "--json")  # the user's own mounts, no root, no socket
            assert status.returncode == 0, status.stderr
            [report] = [r for r in json.loads(status.stdout) if r["mountpoint"] == str(mnt)]
            assert report["answering"] and report["stats"]["fqrn"] == FQRN
            done = mount.unmount()  # `pycvmfs umount`, as the same user
            assert done.returncode == 0, done.stderr
            assert not is_mounted(mnt)
            assert mount.server_exited()
