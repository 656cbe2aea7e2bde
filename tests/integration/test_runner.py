"""Running commands in a real flat image (Debian bookworm + python3, from tests/images.py):
bubblewrap as root and as an ordinary user (`nobody`), with the image's environment and
working directory, exit status passed through; Apptainer/Singularity too when installed.

The flat tree is a hard-link copy of the cached `umoci unpack` rootfs under /var/tmp (every
directory on the way world-traversable, so `nobody` can use it) plus the Singularity files.
The first run builds the images (~1 min, marked slow then); cached runs take seconds.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from pycvmfs.images.runner import (
    ApptainerRunner,
    BwrapRunner,
    RunnerError,
    RunRequest,
    select_runner,
)
from pycvmfs.images.singularity import ImageConfig, write_singularity_files
from tests.images import copy_tree, images_cached, require_images
from tests.mounting import User

REPO_ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"
USER = "nobody"
PROBE = ("/bin/sh", "-c",
         'cat /etc/os-release; python3 -c "import json, sqlite3"; '
         'echo "FOO=$FOO"; echo "GREETING=$GREETING"; echo "PWD=$(pwd)"; echo "UID=$(id -u)"')
OS_RELEASE = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"'

F = TypeVar("F", bound=Callable[..., object])


def uses_images(test: F) -> F:
    """Slow only when the images still have to be built."""
    return test if images_cached() else pytest.mark.slow(test)


@dataclass(frozen=True)
class FlatImage:
    root: Path
    config: ImageConfig


@pytest.fixture(scope="module")
def flat_image() -> Iterator[FlatImage]:
    image = require_images().python
    work = Path(tempfile.mkdtemp(prefix="pycvmfs-runner-", dir="/var/tmp"))
    try:
        work.chmod(0o755)
        root = work / "flat"
        copy_tree(image.rootfs, root)
        config = ImageConfig.from_oci(image.config)
        write_singularity_files(root, config)
        yield FlatImage(root, config)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def bwrap() -> BwrapRunner:
    executable = shutil.which("bwrap")
    if executable is None:
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)")
    runner = BwrapRunner(executable, new_session=True)
    problem = runner.problem()
    if problem is not None:
        pytest.skip(problem)
    return runner


def expected_lines(*, uid: int, pwd: str, foo: str = "bar") -> list[str]:
    return [f"FOO={foo}", 'GREETING=hello "quoted" $world', f"PWD={pwd}", f"UID={uid}"]


# --- as root -----------------------------------------------------------------------------------


@uses_images
@pytest.mark.parametrize("source", ["config", "scripts"])
def test_bwrap_runs_the_image_as_root(flat_image: FlatImage, bwrap: BwrapRunner,
                                      capfd: pytest.CaptureFixture[str], source: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("this variant runs as root")
    if source == "config":     # Env and WorkingDir from the image config
        request = RunRequest.for_image(flat_image.root, PROBE, flat_image.config)
    else:                      # Env from the image's .singularity.d/env scripts
        request = RunRequest(flat_image.root, PROBE, env=None,
                             working_dir=flat_image.config.cwd)
    assert bwrap.run(request) == 0
    out = capfd.readouterr().out
    assert OS_RELEASE in out.splitlines()
    assert out.splitlines()[-4:] == expected_lines(uid=0, pwd="/opt")


@uses_images
def test_exit_status_and_signals_pass_through(flat_image: FlatImage, bwrap: BwrapRunner) -> None:
    def status(script: str) -> int:
        return bwrap.run(RunRequest.for_image(flat_image.root, ["sh", "-c", script],
                                              flat_image.config))

    assert status("exit 7") == 7
    assert status("exit 0") == 0
    assert status("kill -TERM $$") == 128 + 15
    assert status("exec /no/such/program") == 127


@uses_images
def test_extra_env_and_defaults(flat_image: FlatImage, bwrap: BwrapRunner,
                                capfd: pytest.CaptureFixture[str]) -> None:
    request = RunRequest.for_image(flat_image.root, PROBE, flat_image.config,
                                   extra_env=("FOO=override",))
    assert bwrap.run(request) == 0
    assert capfd.readouterr().out.splitlines()[-4:-2] == expected_lines(
        uid=0, pwd="/opt", foo="override")[:2]
    # without a config: the env scripts, and / as working directory
    assert bwrap.run(RunRequest.for_image(flat_image.root, ["sh", "-c", "pwd; echo $FOO"])) == 0
    assert capfd.readouterr().out.splitlines() == ["/", "bar"]


@uses_images
def test_the_image_is_read_only_and_tmp_writable(flat_image: FlatImage,
                                                 bwrap: BwrapRunner) -> None:
    script = "touch /etc/x 2>/dev/null && exit 1; echo ok > /tmp/x && test -s /tmp/x"
    assert bwrap.run(RunRequest.for_image(flat_image.root, ["sh", "-c", script])) == 0
    assert not (flat_image.root / "etc" / "x").exists()


@uses_images
def test_stdin_is_inherited(flat_image: FlatImage, bwrap: BwrapRunner, tmp_path: Path) -> None:
    # run in a child Python so that its stdin can be a pipe we feed
    code = ("import sys; from pathlib import Path; "
            "from pycvmfs.images.runner import BwrapRunner, RunRequest; "
            "sys.exit(BwrapRunner(sys.argv[1]).run(RunRequest.for_image("
            "Path(sys.argv[2]), ['sh', '-c', 'read line; test \"$line\" = hello'])))")
    result = subprocess.run([shutil.which("python3") or SYSTEM_PYTHON, "-c", code,
                             bwrap.executable, str(flat_image.root)],
                            input="hello\n", text=True, capture_output=True,
                            env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr


@uses_images
def test_missing_working_directory_is_a_runner_error(flat_image: FlatImage,
                                                      bwrap: BwrapRunner) -> None:
    with pytest.raises(RunnerError, match="does not exist"):
        bwrap.run(RunRequest(flat_image.root, ("true",), working_dir="/no/such/dir"))
    with pytest.raises(RunnerError, match="not a directory"):
        bwrap.run(RunRequest(flat_image.root, ("true",), working_dir="/etc/debian_version"))


# --- as an ordinary user -----------------------------------------------------------------------




def traversable_by_others(path: Path) -> bool:
    path = path.resolve()
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in [*path.parents, path])


@pytest.fixture(scope="module")
def user(bwrap: BwrapRunner) -> User:
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to another user")
    try:
        entry = pwd.getpwnam(USER)
    except KeyError:
        pytest.skip(f"no user {USER!r}")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} is missing (runs pycvmfs as {USER})")
    if not traversable_by_others(REPO_ROOT / "pycvmfs" / "images"):
        pytest.skip(f"{REPO_ROOT} is not readable by other users")
    who = User(USER, entry.pw_uid, entry.pw_gid)
    probe = subprocess.run([*who.prefix, bwrap.executable, "--ro-bind", "/", "/",
                            "--unshare-all", "--share-net", "--", "/bin/true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"unprivileged user namespaces are not available to {USER}: "
                    f"{probe.stderr.strip()}")
    return who


AS_USER = """\
import json, sys
from pathlib import Path
from pycvmfs.images.runner import RunRequest, select_runner
from pycvmfs.images.singularity import ImageConfig
config = ImageConfig.from_oci(json.loads(sys.argv[2]))
runner = select_runner("bwrap")
sys.exit(runner.run(RunRequest.for_image(Path(sys.argv[1]), sys.argv[3:], config)))
"""


def run_as(user: User, flat_image: FlatImage, argv: tuple[str, ...] | list[str],
           config: dict[str, object]) -> subprocess.CompletedProcess[str]:
    """The library itself runs as the user (system Python, the repository on PYTHONPATH)."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT),
           "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([*user.prefix, SYSTEM_PYTHON, "-c", AS_USER, str(flat_image.root),
                           json.dumps(config), *argv],
                          capture_output=True, text=True, env=env, cwd="/", timeout=120,
                          stdin=subprocess.DEVNULL)


@uses_images
def test_bwrap_runs_the_image_as_an_ordinary_user(flat_image: FlatImage, user: User) -> None:
    config = require_images().python.config
    result = run_as(user, flat_image, PROBE, config)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert OS_RELEASE in lines
    assert lines[-4:] == expected_lines(uid=user.uid, pwd="/opt")
    assert run_as(user, flat_image, ["sh", "-c", "exit 7"], config).returncode == 7


# --- Apptainer / Singularity, when installed ----------------------------------------------------


@uses_images
@pytest.mark.parametrize("name", ["apptainer", "singularity"])
def test_apptainer_runs_the_image(flat_image: FlatImage, name: str,
                                  capfd: pytest.CaptureFixture[str]) -> None:
    if shutil.which(name) is None:
        pytest.skip(f"{name} is not installed")
    runner = select_runner(name)
    request = RunRequest(flat_image.root, PROBE, None, flat_image.config.cwd)
    assert runner.run(request) == 0
    out = capfd.readouterr().out
    assert OS_RELEASE in out.splitlines()
    assert out.splitlines()[-4:-1] == expected_lines(uid=os.geteuid(), pwd="/opt")[:3]
    assert runner.run(RunRequest(flat_image.root, ("sh", "-c", "exit 7"))) == 7


# --- choosing a runner and building its command (no image needed) ------------------------------


def fake_which(found: dict[str, str]) -> Callable[[str], str | None]:
    return found.get


def test_no_runner_error_lists_everything_looked_for() -> None:
    with pytest.raises(RunnerError) as caught:
        select_runner(None, which=fake_which({}))
    message = str(caught.value)
    for name in ("apptainer", "singularity", "bwrap"):
        assert f"{name}: not found on PATH" in message
    assert "apt-get install bubblewrap" in message


def test_preference_order_and_explicit_choice() -> None:
    everything = fake_which({"apptainer": "/x/apptainer", "singularity": "/x/singularity",
                             "bwrap": "/x/bwrap"})
    assert select_runner(None, which=everything, probe=False).name == "apptainer"
    assert select_runner("auto", which=everything, probe=False).name == "apptainer"
    assert select_runner("bwrap", which=everything, probe=False).name == "bwrap"
    only = fake_which({"singularity": "/x/singularity", "bwrap": "/x/bwrap"})
    assert select_runner(None, which=only, probe=False).name == "singularity"
    with pytest.raises(RunnerError, match="unknown runner 'docker'"):
        select_runner("docker", which=everything)
    with pytest.raises(RunnerError, match="apptainer: not found"):
        select_runner("apptainer", which=only)


def test_unusable_bwrap_is_reported_with_its_reason() -> None:
    broken = fake_which({"bwrap": "/bin/false"})     # exits 1 like a bwrap without userns
    with pytest.raises(RunnerError, match=r"bwrap: /bin/false cannot create a sandbox"):
        select_runner(None, which=broken)


def make_root(tmp_path: Path, *, singularity: bool = False) -> Path:
    root = tmp_path / "root"
    for directory in ("proc", "dev", "tmp", "opt", "etc"):
        (root / directory).mkdir(parents=True)
    (root / "etc" / "resolv.conf").write_text("")
    if singularity:
        write_singularity_files(root, ImageConfig(env=("FOO=bar",)))
    return root


def test_apptainer_command_line(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    request = RunRequest(root, ("python3", "-c", "pass"), env=("FOO=a,b", "PATH=/p", "BAD.NAME=1"),
                         working_dir="/opt", extra_env=("X=y",))
    invocation = ApptainerRunner("/x/apptainer").invocation(request)
    assert invocation.argv == ("/x/apptainer", "exec", "--containall", "--cleanenv",
                               "--pwd", "/opt", str(root), "python3", "-c", "pass")
    assert invocation.env["APPTAINERENV_FOO"] == "a,b"       # commas survive
    assert invocation.env["APPTAINERENV_PATH"] == "/p"
    assert invocation.env["APPTAINERENV_X"] == "y"
    assert not any("BAD" in key for key in invocation.env)
    singularity = ApptainerRunner("/x/singularity", name="singularity").invocation(request)
    assert singularity.env["SINGULARITYENV_FOO"] == "a,b"


def test_bwrap_command_line(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    request = RunRequest(root, ("ls",), env=("FOO=bar", "PATH=/image/bin"), working_dir="/opt")
    invocation = BwrapRunner("/x/bwrap", new_session=True).invocation(request)
    argv = list(invocation.argv)
    assert argv[:8] == ["/x/bwrap", "--ro-bind", str(root), "/", "--dev", "/dev",
                        "--proc", "/proc"]
    for flag in ("--unshare-all", "--share-net", "--die-with-parent", "--new-session"):
        assert flag in argv
    assert argv[argv.index("--tmpfs") + 1] == "/tmp"
    assert argv[argv.index("--chdir") + 1] == "/opt"
    assert argv[-2:] == ["--", "ls"]
    if Path("/etc/resolv.conf").exists():     # bound: the image has a regular file there
        assert "/etc/resolv.conf" in argv
    assert "/etc/hosts" not in argv           # not bound: nothing to mount on in the image
    assert invocation.env["FOO"] == "bar" and invocation.env["PATH"] == "/image/bin"
    interactive = BwrapRunner("/x/bwrap", new_session=False).invocation(request)
    assert "--new-session" not in interactive.argv


def test_bwrap_uses_the_env_scripts_without_a_config(tmp_path: Path) -> None:
    plain = RunRequest(make_root(tmp_path / "a"), ("ls",))
    assert BwrapRunner("/x/bwrap").invocation(plain).argv[-2:] == ("--", "ls")
    with_scripts = RunRequest(make_root(tmp_path / "b", singularity=True), ("ls",))
    invocation = BwrapRunner("/x/bwrap").invocation(with_scripts)
    assert invocation.argv[-3:] == ("--", "/.singularity.d/actions/exec", "ls")
    assert "FOO" not in invocation.env        # the scripts set it inside


def test_not_a_root_filesystem(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunnerError, match="no /proc or /dev"):
        BwrapRunner("/x/bwrap").invocation(RunRequest(tmp_path / "empty", ("ls",)))
    with pytest.raises(RunnerError, match="not a directory"):
        BwrapRunner("/x/bwrap").invocation(RunRequest(tmp_path / "missing", ("ls",)))
    with pytest.raises(RunnerError, match="no command"):
        BwrapRunner("/x/bwrap").invocation(RunRequest(tmp_path / "empty", ()))
