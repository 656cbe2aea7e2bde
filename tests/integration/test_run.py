"""`pycvmfs run` end to end: a Debian image with python3 ingested from a real registry,
served by nginx, run straight from the mount (bubblewrap here), exit codes passed through
(127/126 as a shell gives them), and the mount it made ended when it ends."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ingested import IngestedImages
from tests.integration.test_client_unprivileged import (  # noqa: F401 - fixtures
    SYSTEM_PYTHON,
    area,
    as_user,
    fuse_open_to_all,
    user,
    user_env,
)
from tests.mounting import User, force_unmount, is_mounted, mountinfo
from tests.publish_helpers import Keys
from tests.registry import NEEDS_REGISTRY_TOOLS, needs_tools
from tests.servers import NEEDS_FUSE_AND_NGINX, Nginx, shared_scratch

pytestmark = [*NEEDS_FUSE_AND_NGINX, NEEDS_REGISTRY_TOOLS, needs_tools("bwrap"),
              pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PROBE = 'cat /etc/os-release; python3 -c "import json, sqlite3"; echo "FOO=$FOO"; pwd'


@dataclass
class Served:
    fqrn: str
    image: str  # FQRN/IMAGE-PATH
    options: str  # -o for mounting
    mnt: Path


@pytest.fixture(scope="module")
def served(keys: Keys, ingested_images: IngestedImages) -> Iterator[Served]:
    with shared_scratch("pycvmfs-run-") as base, Nginx() as server:
        url = server.publish(f"cvmfs/{keys.fqrn}", ingested_images.storage)
        options = ",".join([f"CVMFS_SERVER_URL={url}", "CVMFS_HTTP_PROXY=DIRECT",
                            f"CVMFS_PUBLIC_KEY={keys.public_key_file}",
                            f"CVMFS_CACHE_BASE={base / 'cache'}"])
        mnt = base / "cache" / "mnt" / keys.fqrn
        try:
            yield Served(keys.fqrn, f"{keys.fqrn}/{ingested_images.name('python')}",
                         options, mnt)
        finally:
            if is_mounted(mnt):
                subprocess.run([sys.executable, "-m", "pycvmfs", "umount", str(mnt)],
                               capture_output=True, cwd=ROOT)
            force_unmount(mnt)


def _run(served: Served, *command: str, mount: tuple[str, ...] = ()
         ) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYCVMFS_CONFIG_ROOT="/nonexistent")
    return subprocess.run([sys.executable, "-m", "pycvmfs", "run", "-o", served.options,
                           "--runner", "bwrap", *mount, served.image, "--", *command],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def test_run_mounts_and_runs_the_image(served: Served) -> None:
    done = _run(served, "/bin/sh", "-c", PROBE)
    assert done.returncode == 0, done.stderr
    assert "Debian GNU/Linux 12" in done.stdout
    assert "FOO=bar" in done.stdout  # the image's Env
    assert done.stdout.rstrip().endswith("/opt")  # its WorkingDir
    assert not is_mounted(served.mnt)  # what it mounted, it unmounted
    failed = _run(served, "/bin/sh", "-c", "exit 7")
    assert failed.returncode == 7, failed.stderr
    assert not is_mounted(served.mnt)


def test_a_chosen_mount_point_stays_and_is_reused(served: Served) -> None:
    kept = _run(served, "/bin/sh", "-c", "exit 3", mount=("--mount", str(served.mnt)))
    assert kept.returncode == 3 and "stays mounted" in kept.stderr, kept.stderr
    assert is_mounted(served.mnt)
    try:
        again = _run(served, "true")  # finds the mount: uses it, says where, leaves it
        assert again.returncode == 0, again.stderr
        assert f"at {served.mnt}" in again.stderr and f"pycvmfs umount {served.mnt}" \
            in again.stderr
        assert is_mounted(served.mnt)
    finally:
        subprocess.run([sys.executable, "-m", "pycvmfs", "umount", str(served.mnt)],
                       capture_output=True, cwd=ROOT)


def test_missing_and_unexecutable_commands_exit_as_in_a_shell(served: Served) -> None:
    missing = _run(served, "no-such-command")
    assert missing.returncode == 127 and "no-such-command: command not found" in missing.stderr
    assert _run(served, "/no/such/file").returncode == 127
    assert _run(served, "/etc/os-release").returncode == 126  # there, not executable
    assert _run(served, "/etc").returncode == 126
    assert _run(served, "/bin/sh", "-c", "kill -TERM $$").returncode == 128 + 15
    assert not is_mounted(served.mnt)


def test_sigterm_unmounts_what_run_mounted(served: Served) -> None:
    env = dict(os.environ, PYCVMFS_CONFIG_ROOT="/nonexistent")
    process = subprocess.Popen([sys.executable, "-m", "pycvmfs", "run", "-o", served.options,
                                "--runner", "bwrap", served.image, "--", "/bin/sh", "-c",
                                "echo started; sleep 60"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        assert process.stdout is not None and process.stdout.readline() == "started\n"
        process.terminate()  # forwarded to the container, which ends; then the unmount
        assert process.wait(timeout=60) == 128 + 15
    finally:
        process.kill()
        process.communicate(timeout=30)
    assert not is_mounted(served.mnt)


def test_run_refuses_a_missing_image(served: Served) -> None:
    env = dict(os.environ, PYCVMFS_CONFIG_ROOT="/nonexistent")
    done = subprocess.run([sys.executable, "-m", "pycvmfs", "run", "-o", served.options,
                           f"{served.fqrn}/no/such:image", "--", "true"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 1 and "no image there" in done.stderr


@pytest.mark.usefixtures("fuse_open_to_all")
def test_an_ordinary_user_runs_the_image(served: Served, keys: Keys, user: User,  # noqa: F811
                                         area: Path) -> None:  # noqa: F811
    home = area / "home"
    home.mkdir()
    os.chown(home, user.uid, user.gid)
    key = area / f"{keys.fqrn}.pub"
    shutil.copy(keys.public_key_file, key)
    key.chmod(0o644)
    options = ",".join(o for o in served.options.split(",")
                       if not o.startswith(("CVMFS_PUBLIC_KEY=", "CVMFS_CACHE_BASE=")))
    env = user_env(user, home, area / "no-etc")
    done = as_user(user, env, home, SYSTEM_PYTHON, "-m", "pycvmfs", "run",
                   "-o", f"{options},CVMFS_PUBLIC_KEY={key}", "--runner", "bwrap",
                   served.image, "--", "/bin/sh", "-c", PROBE)
    mnt = home / ".cache" / "pycvmfs" / "mnt" / served.fqrn  # the user's own cache base
    try:
        if done.returncode != 0 and "user namespace" in done.stderr.lower():
            pytest.skip(f"bubblewrap cannot run unprivileged here: {done.stderr.strip()}")
        assert done.returncode == 0, done.stderr
        assert "Debian GNU/Linux 12" in done.stdout and "FOO=bar" in done.stdout
        assert str(mnt) not in mountinfo()  # the user's own mount, ended by the user
    finally:
        as_user(user, env, home, SYSTEM_PYTHON, "-m", "pycvmfs", "umount", str(mnt))
        force_unmount(mnt)
