"""`pycvmfs exec REPO... -- CMD` as an ordinary user: repositories at /cvmfs/<fqrn> in a
private namespace, nothing left on the host.

The user is `nobody`, set up as in test_client_unprivileged (Debian's python3 with the
project on PYTHONPATH, /dev/fuse 0666 for the test and restored). Two repositories: the
bundled demo, and a small one published here whose `bin/sh` is the host's /bin/sh (a
shebang into /cvmfs). The host has no /cvmfs: every path the command reads through
/cvmfs exists only in its namespace.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycvmfs.fs.mount import BACKENDS
from pycvmfs.publisher.keys import create_keys
from tests.integration.test_client_unprivileged import (
    SYSTEM_PYTHON,
    ordinary_user,
    user_env,
)
from tests.mounting import (
    DEMO_FQRN,
    DEMO_KEY,
    DEMO_REPO,
    ROOT,
    User,
    backend_params,
    fuse_open_to_all_users,
    mountinfo,
)
from tests.publish_helpers import Keys, run_publish
from tests.servers import Nginx, nginx_binary, shared_scratch

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0,
                       reason="needs /dev/fuse and root (to set up the user's side)"),
    pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed"),
    pytest.mark.skipif(os.path.exists("/cvmfs"), reason="the host has /cvmfs"),
    pytest.mark.usefixtures("fuse_open_to_all"),
]

TOOLS = "tools.pycvmfs.org"
README_END = "revision 2: updated\n"
RUN_TIMEOUT_S = 60


class Site:
    """Nginx serving both repositories, a configuration root for them, the user's home."""

    def __init__(self, user: User, area: Path, server: Nginx) -> None:
        self.user = user
        self.home = area / "home"
        self.home.mkdir()
        os.chown(self.home, user.uid, user.gid)
        self.config_root = area / "etc-cvmfs"
        (self.config_root / "config.d").mkdir(parents=True)
        (self.config_root / "keys").mkdir()
        tools_keys = Keys(TOOLS, area / "keys")
        create_keys(TOOLS, tools_keys.keys_dir)
        tree = area / "tools-tree"
        (tree / "bin").mkdir(parents=True)
        shutil.copy("/bin/sh", tree / "bin" / "sh")
        (tree / "hello.txt").write_text("hello from tools\n")
        storage = area / "tools-storage"
        run_publish(tree, storage, tools_keys)
        for path in [storage, *storage.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        for fqrn, repo, key in ((DEMO_FQRN, DEMO_REPO, DEMO_KEY),
                                (TOOLS, storage, tools_keys.public_key_file)):
            url = server.publish(f"cvmfs/{fqrn}", repo)
            shutil.copy(key, self.config_root / "keys" / key.name)
            (self.config_root / "config.d" / f"{fqrn}.conf").write_text(
                f"CVMFS_SERVER_URL={url.rsplit('/', 1)[0]}/@fqrn@\n"
                "CVMFS_HTTP_PROXY=DIRECT\nCVMFS_MAX_RETRIES=1\nCVMFS_TIMEOUT_DIRECT=5\n")
        for path in [self.config_root, *self.config_root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        self.env = user_env(user, self.home, self.config_root)

    def command(self, *args: str) -> list[str]:
        setpriv, *rest = self.user.prefix  # absolute: a test runs it with a bare PATH
        return [shutil.which(setpriv) or setpriv, *rest, SYSTEM_PYTHON, "-m", "pycvmfs",
                "exec", *args]

    def run(self, *args: str, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*args), env=env or self.env, cwd=self.home,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=RUN_TIMEOUT_S)


@pytest.fixture(scope="module")
def module_site() -> Iterator[Site]:
    """One server, configuration and home for the module (the cache stays warm)."""
    user = ordinary_user()
    with shared_scratch("pycvmfs-exec-") as base, Nginx() as nginx:
        yield Site(user, base, nginx)


@pytest.fixture
def fuse_open_to_all(module_site: Site) -> Iterator[None]:
    """/dev/fuse open to every user for the test (`fuse_open_to_all_users`)."""
    with fuse_open_to_all_users():
        yield


@pytest.fixture
def site(module_site: Site) -> Iterator[Site]:
    """The module's site; afterwards no mount and no serving process may be left."""
    yield module_site
    mounts = [point for point in mountinfo()
              if point.startswith(("/cvmfs", str(module_site.home)))]
    assert not mounts, "a mount was left in the host namespace"
    assert not _serving_processes(module_site.user, module_site.home), \
        "a process was left behind"


@pytest.fixture
def area(site: Site) -> Iterator[Path]:
    with shared_scratch("pycvmfs-exec-test-") as base:
        yield base


def _serving_processes(user: User, home: Path) -> list[str]:
    """The user's pycvmfs processes of this site: naming `home`, or with it as HOME (other
    tests, on another pytest worker or in another run, may run pycvmfs as the same user;
    the environment is read as the process started, whatever namespace it entered)."""
    found = []
    for name in os.listdir("/proc"):
        try:
            if not name.isdigit() or os.stat(f"/proc/{name}").st_uid != user.uid:
                continue
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ")
            environ = Path(f"/proc/{name}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"pycvmfs" in cmdline and (os.fsencode(home) in cmdline
                                      or b"HOME=" + os.fsencode(home) in environ):
            found.append(cmdline.decode(errors="replace"))
    return found


@pytest.mark.parametrize("backend", backend_params(*BACKENDS))
def test_reads_through_absolute_paths_as_the_user(site: Site, backend: str) -> None:
    script = ("import os; p = '/cvmfs/demo.pycvmfs.org'; "
              "print(os.geteuid(), os.getegid(), os.stat(p + '/README.txt').st_uid); "
              "print(open(p + '/README.txt').read(), end=''); "
              "print(len(open(p + '/data/random.bin', 'rb').read())); "
              "print(os.getxattr(p, 'user.fqrn').decode()); "
              "from pycvmfs.fs.mount import inspect_mount; print(inspect_mount(p).health); "
              "print(os.listdir('/cvmfs'))")
    done = site.run("--backend", backend, DEMO_FQRN, "--", "/usr/bin/python3", "-c", script)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    uid, gid = site.user.uid, site.user.gid
    assert lines[0] == f"{uid} {gid} {uid}"  # the user's own ids; files show the user
    assert done.stdout.count(README_END) == 1
    assert "1500000" in lines and DEMO_FQRN in lines
    assert "Health.SERVING" in lines  # its serving process is found, as for a mount
    assert lines[-1] == f"[{DEMO_FQRN!r}]"
    assert not Path("/cvmfs").exists()


def test_two_repositories_and_a_shebang_into_cvmfs(site: Site) -> None:
    script = site.home / "job.sh"
    script.write_text(f"#!/cvmfs/{TOOLS}/bin/sh\ncat /cvmfs/{TOOLS}/hello.txt\n"
                      f"tail -n 1 /cvmfs/{DEMO_FQRN}/README.txt\nexit 3\n")
    script.chmod(0o755)
    done = site.run("-o", "CVMFS_MAX_RETRIES=2", DEMO_FQRN, TOOLS, "--", str(script))
    assert done.returncode == 3, done.stderr
    assert done.stdout == "hello from tools\n" + README_END


def test_exit_statuses_as_a_shell(site: Site) -> None:
    assert site.run(DEMO_FQRN, "--", "true").returncode == 0
    missing = site.run(DEMO_FQRN, "--", "no-such-command-here")
    assert missing.returncode == 127
    assert "no-such-command-here: command not found" in missing.stderr
    readme = site.run(DEMO_FQRN, "--", f"/cvmfs/{DEMO_FQRN}/README.txt")  # not executable
    assert readme.returncode == 126, readme.stderr


def test_signal_to_the_command_ends_everything(site: Site) -> None:
    marker = site.home / "started"
    script = (f"touch {marker}; exec sleep 30")
    child = subprocess.Popen(site.command(DEMO_FQRN, "--", "sh", "-c", script),
                             env=site.env, cwd=site.home, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not marker.exists():
            assert child.poll() is None and time.monotonic() < deadline, child.stderr
            time.sleep(0.02)
        child.send_signal(signal.SIGTERM)  # forwarded to CMD
        assert child.wait(timeout=RUN_TIMEOUT_S) == 128 + signal.SIGTERM
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for stream in (child.stdout, child.stderr):
            assert stream is not None
            stream.close()


def test_without_fusermount3_on_path(site: Site, area: Path) -> None:
    bare = area / "bin"
    bare.mkdir()
    for tool in ("sh", "cat", "true"):
        os.symlink(shutil.which(tool) or f"/bin/{tool}", bare / tool)
    env = {**site.env, "PATH": str(bare)}
    done = site.run(DEMO_FQRN, "--", "sh", "-c", f"cat /cvmfs/{DEMO_FQRN}/README.txt",
                    env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith(README_END)


def test_two_concurrent_jobs_share_the_cache(site: Site) -> None:
    command = site.command(DEMO_FQRN, "--", "sh", "-c",
                           f"cat /cvmfs/{DEMO_FQRN}/data/random.bin | wc -c")
    jobs = [subprocess.Popen(command, env=site.env, cwd=site.home, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [job.communicate(timeout=RUN_TIMEOUT_S) for job in jobs]
    for job, (out, err) in zip(jobs, outputs, strict=True):
        assert job.returncode == 0, err
        assert out.strip() == "1500000"
    cache = site.home / ".cache" / "pycvmfs" / "shared"  # the same base as `pycvmfs mount`
    assert cache.is_dir() and cache.stat().st_uid == site.user.uid


def test_refused_namespaces_fall_back_to_a_mount_in_home(site: Site, area: Path) -> None:
    fake = area / "proc-sys"
    (fake / "kernel").mkdir(parents=True)
    (fake / "kernel" / "unprivileged_userns_clone").write_text("0\n")
    fake.chmod(0o755)
    (fake / "kernel").chmod(0o755)
    (fake / "kernel" / "unprivileged_userns_clone").chmod(0o644)
    env = {**site.env, "PYCVMFS_PROC_SYS": str(fake)}
    mnt = site.home / "cvmfs" / DEMO_FQRN
    done = site.run(DEMO_FQRN, "--", "sh", "-c", f"tail -n 1 {mnt}/README.txt; exit 5",
                    env=env)
    assert done.returncode == 5, done.stderr
    assert done.stdout == README_END
    assert "kernel.unprivileged_userns_clone=0" in done.stderr
    assert "sysctl kernel.unprivileged_userns_clone=1" in done.stderr
    assert "paths are not at /cvmfs" in done.stderr
    assert str(mnt) not in mountinfo()


def test_a_repository_that_cannot_mount_ends_the_others(site: Site) -> None:
    broken = "broken.pycvmfs.org"
    conf = site.config_root / "config.d" / f"{broken}.conf"
    conf.write_text("CVMFS_SERVER_URL=http://127.0.0.1:1/cvmfs/@fqrn@\nCVMFS_HTTP_PROXY=DIRECT\n"
                    f"CVMFS_PUBLIC_KEY={site.config_root / 'keys' / DEMO_KEY.name}\n"
                    "CVMFS_MAX_RETRIES=0\n")
    conf.chmod(0o644)
    try:
        done = site.run(DEMO_FQRN, broken, "--", "true")
    finally:
        conf.unlink()
    assert done.returncode == 1
    assert done.stderr.startswith("pycvmfs: error: ") and broken in done.stderr
    assert "Traceback" not in done.stderr


def test_killing_exec_leaves_nothing(site: Site) -> None:
    marker = site.home / "started-kill"
    marker.unlink(missing_ok=True)
    child = subprocess.Popen(site.command(DEMO_FQRN, "--", "sh", "-c",
                                          f"touch {marker}; exec sleep 31.7"),
                             env=site.env, cwd=site.home, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not marker.exists():
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        child.kill()  # no cleanup of its own: the parent-death signals end the rest
        child.wait()
        deadline = time.monotonic() + 10
        while _serving_processes(site.user, site.home) or _sleeping(marker):
            assert time.monotonic() < deadline, "processes outlived a killed exec"
            time.sleep(0.05)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def _sleeping(marker: Path) -> bool:
    """Whether the command (`sleep 31.7` after touching `marker`) still runs."""
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() \
                    and Path(f"/proc/{name}/cmdline").read_bytes() == b"sleep\x0031.7\x00":
                return True
        except OSError:
            continue
    return False


def test_root_needs_only_a_mount_namespace(site: Site, area: Path) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(area),
           "PYCVMFS_CONFIG_ROOT": str(site.config_root), "LANG": "C.UTF-8"}
    done = subprocess.run([sys.executable, "-m", "pycvmfs", "exec", "-o",
                           f"CVMFS_CACHE_BASE={area / 'cache'}", DEMO_FQRN, "--", "sh", "-c",
                           f"id -u; tail -n 1 /cvmfs/{DEMO_FQRN}/README.txt; exit 9"],
                          env=env, cwd=ROOT, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 9, done.stderr
    assert done.stdout == "0\n" + README_END
