"""Run a command inside a flat image root filesystem (a DUCC `.flat/...` tree, locally or on a
pycvmfs mount), with the image's environment and working directory, as root or as an
ordinary user.

Two runners, tried in this order by `select_runner()`:

- **Apptainer / Singularity** (`apptainer` or `singularity` on PATH), the tool flat images are
  made for: `apptainer exec --containall --cleanenv --pwd WORKDIR ROOT CMD...`
  - `exec` runs the image's `/.singularity.d/actions/exec`, which sources
    `/.singularity.d/env/*.sh`: the image's Env (`10-docker2singularity.sh`) applies.
  - `--cleanenv`: no host variable leaks in and overrides the image's `${VAR:-default}`
    values (implied by `--containall`, spelled out because it is the one that matters here).
  - `--containall`: no host $HOME, /tmp or cwd bound in, own PID and IPC namespaces: the same
    isolation as the bubblewrap runner, so a command behaves the same under both.
  - `--pwd`: Apptainer ignores the image's WorkingDir and would start in the host's cwd.
  - explicit variables (`RunRequest.env`, `extra_env`) go in as `APPTAINERENV_NAME=value`
    (`SINGULARITYENV_` for singularity), which survive `--cleanenv` and need no quoting,
    unlike `--env A=1,B=2`, which splits values at commas.
- **bubblewrap** (`bwrap`), via unprivileged user namespaces for an ordinary user and the same
  way for root:
  `bwrap --ro-bind ROOT / --dev /dev --proc /proc --tmpfs /tmp --unshare-all --share-net
   --die-with-parent [--new-session] [--ro-bind /etc/resolv.conf ...] --chdir WORKDIR
   -- CMD...`
  - read-only root: a flat image on CVMFS is read-only anyway; writable scratch is the tmpfs
    on /tmp.
  - `--unshare-all` (user, PID, IPC, UTS, cgroup and network namespaces), then `--share-net`
    to give the network back: containers generally expect it, and Apptainer shares it too.
  - `--die-with-parent`: killing pycvmfs does not leave the container running.
  - `--new-session` (protection against TIOCSTI input injection into the caller's terminal)
    only when stdin is not a terminal: it would also take the controlling terminal away from
    interactive shells (no job control).
  - the host's /etc/resolv.conf and /etc/hosts are bound over the image's when the image has
    them as regular files (a bind needs an existing target on a read-only root; DUCC and
    `pycvmfs.images.singularity` create empty ones), as Apptainer does, so DNS works.
  - `RunRequest.cvmfs` (`pycvmfs run --cvmfs`): a tmpfs on /cvmfs with each repository
    bound read-only at /cvmfs/<fqrn>; an image without a /cvmfs directory gets a tmpfs root
    with its top-level entries bound and an empty /cvmfs, remounted read-only (Apptainer:
    `--bind HOST:/cvmfs/<fqrn>:ro`).
  - environment: bwrap hands its own environment to the command, so it is started with
    exactly the container's: PATH (Debian default), HOME (/root for root, else /tmp, the only
    writable place), TERM from the caller, then the image's Env, then `extra_env`. Without an
    explicit Env (`RunRequest.env is None`), the command runs through the image's
    `/.singularity.d/actions/exec`, which sources the image's env scripts, as Apptainer does.

Exit status: the command's, passed through; death by signal N gives 128 + N, like a shell;
a command missing from the image is refused before the runner starts with CommandNotRunnableError
(127, or 126 when it is there but not executable), as a shell reports them.
stdin, stdout and stderr are inherited. While the command runs, SIGINT and SIGQUIT are
ignored here (the terminal delivers them to the command, which decides), SIGTERM and SIGHUP
are forwarded to it.

Caveats:
- A root-made FUSE mount must be mounted with `allow_other` for other users to run from it.
- No /etc/passwd entry is injected for the caller (Apptainer does): `whoami` fails inside the
  container for a uid the image does not know.
- bwrap reports its own setup failures (e.g. a missing mount point) with a `bwrap:` message
  and exit status 1, which looks like the command's status 1: bwrap 0.8 has no way to tell
  them apart (`--json-status-fd` reports the child before its setup, `exit-code` came in a
  later version). The checks before starting catch the usual causes and raise RunnerError.
- bwrap needs unprivileged user namespaces for ordinary users (`kernel.unprivileged_userns_clone`
  on Debian, AppArmor's `apparmor_restrict_unprivileged_userns` on Ubuntu);
  `select_runner()` probes and reports it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Protocol

from pycvmfs.errors import PycvmfsError
from pycvmfs.images.singularity import EXEC_ACTION, SHELL_NAME, ImageConfig

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RUNNER_ORDER = ("apptainer", "singularity", "bwrap")
EXECUTABLES = {"apptainer": "apptainer", "singularity": "singularity", "bwrap": "bwrap"}
HOST_FILES = ("etc/resolv.conf", "etc/hosts")
PROBE_TIMEOUT_S = 30  # a bwrap probe takes milliseconds; this only bounds a hung system


MAX_SYMLINKS = 40  # as the kernel's limit on symlinks followed in one lookup


class RunnerError(PycvmfsError):
    """No usable runner, or the runner could not start the container."""


class CommandNotRunnableError(RunnerError):
    """The command is not in the image (`status` 127) or not executable there (126), as a
    shell reports it: found before the runner starts, so its status is not the runner's."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class RunRequest:
    """What to run, where, and with which environment.

    `env` is the image's environment as `NAME=value` items (the OCI config's Env); None means
    "the image knows": take it from the image's `/.singularity.d/env/*.sh` scripts.
    `extra_env` (`NAME=value`) is set on top, e.g. from the command line.
    """

    root: Path
    argv: tuple[str, ...]
    env: tuple[str, ...] | None = None
    working_dir: str = "/"
    extra_env: tuple[str, ...] = ()
    cvmfs: tuple[tuple[str, Path], ...] = ()  # (fqrn, host directory): read-only at /cvmfs

    @classmethod
    def for_image(cls, root: Path, argv: Sequence[str], config: ImageConfig | None = None,
                  *, extra_env: Sequence[str] = (),
                  cvmfs: Mapping[str, Path] | None = None) -> RunRequest:
        """A request for `argv` in the image at `root`; with its config when known."""
        binds = tuple(sorted((cvmfs or {}).items()))
        if config is None:
            return cls(Path(root), tuple(argv), None, "/", tuple(extra_env), binds)
        return cls(Path(root), tuple(argv), config.env, config.cwd, tuple(extra_env), binds)


@dataclass(frozen=True, slots=True)
class Invocation:
    """The host command that runs the request, and the environment to start it with."""

    argv: tuple[str, ...]
    env: Mapping[str, str]


class Runner(Protocol):
    """One way of running a command in a flat image."""

    @property
    def name(self) -> str:
        """"apptainer", "singularity" or "bwrap"."""
        ...

    def problem(self) -> str | None:
        """Why this runner cannot work here (probed), or None."""
        ...

    def invocation(self, request: RunRequest) -> Invocation:
        """The host command for `request` (pure apart from looking at the image tree)."""
        ...

    def run(self, request: RunRequest) -> int:
        """Run it with inherited stdio; the command's exit status."""
        ...


# --- environment helpers ----------------------------------------------------------------------


def parse_env(items: Sequence[str]) -> dict[str, str]:
    """`NAME=value` items into a dict, later items winning; a bare `NAME` (allowed in OCI
    configs: "inherit") and invalid names are ignored."""
    result: dict[str, str] = {}
    for item in items:
        name, has_value, value = item.partition("=")
        if has_value and name and "\0" not in item:
            result[name] = value
    return result


def _base_env(host: Mapping[str, str]) -> dict[str, str]:
    env = {"PATH": DEFAULT_PATH, "HOME": "/root" if os.geteuid() == 0 else "/tmp"}
    if "TERM" in host:
        env["TERM"] = host["TERM"]
    return env


def cvmfs_repositories(fqrn: str, mount_dir: Path, mount_points: Iterable[str],
                       host_cvmfs: Path = Path("/cvmfs")) -> dict[str, Path]:
    """What `pycvmfs run --cvmfs` binds at /cvmfs/<fqrn> in the container: the image's
    repository (where it is mounted) and every repository mounted at `host_cvmfs` (the
    host's, or the one `pycvmfs exec` made) among `mount_points` (the mount table's)."""
    found = {Path(point).name: Path(point) for point in mount_points
             if Path(point).parent == host_cvmfs and not Path(point).name.startswith(".")}
    found[fqrn] = mount_dir
    return found


def _check_request(request: RunRequest) -> None:
    if not request.argv:
        raise RunnerError("no command given")
    if not request.root.is_dir():
        raise RunnerError(f"image root {request.root} is not a directory")
    if not request.working_dir.startswith("/"):
        raise RunnerError(f"working directory {request.working_dir!r} is not absolute")
    inside = request.root / request.working_dir.lstrip("/")
    if not os.path.lexists(inside):
        raise RunnerError(f"working directory {request.working_dir} does not exist in the "
                          f"image {request.root}")
    if not inside.is_symlink() and not inside.is_dir():
        raise RunnerError(f"working directory {request.working_dir} is not a directory in "
                          f"the image {request.root}")


def resolve_in_image(root: Path, path: str) -> Path | None:
    """Host path of absolute image path `path`, symlinks resolved as inside the image
    (absolute targets from the image root, `..` never above it); None when a component
    is missing or the symlinks loop."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if candidate.is_symlink():
            hops += 1
            if hops > MAX_SYMLINKS:
                return None
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        if not os.path.lexists(candidate):
            return None
        resolved.append(part)
    return root.joinpath(*resolved)


def check_command(request: RunRequest) -> None:
    """Raise CommandNotRunnableError when the command is missing (127) or not executable (126)
    in the image, as a shell would find it: a name with `/` from the working directory,
    else along the container's PATH. Without a known environment (`env` None: the image's
    env scripts may extend PATH) only names with `/` are checked."""
    name = request.argv[0]
    if "/" in name:
        path = name if name.startswith("/") else f"{request.working_dir}/{name}"
        found = resolve_in_image(request.root, path)
        if found is None:
            raise CommandNotRunnableError(f"{name}: No such file or directory", 127)
        if found.is_dir():
            raise CommandNotRunnableError(f"{name}: Is a directory", 126)
        if not _executable(found):
            raise CommandNotRunnableError(f"{name}: Permission denied", 126)
        return
    if request.env is None:
        return
    env = parse_env(request.env) | parse_env(request.extra_env)
    denied = False
    for directory in env.get("PATH", DEFAULT_PATH).split(":"):
        found = resolve_in_image(request.root, f"{directory or request.working_dir}/{name}")
        if found is None or found.is_dir():
            continue
        if _executable(found):
            return
        denied = True
    if denied:
        raise CommandNotRunnableError(f"{name}: Permission denied", 126)
    raise CommandNotRunnableError(f"{name}: command not found", 127)


def _executable(path: Path) -> bool:
    """From the mode bits, as execve judges them (access(2) on a FUSE mount without
    default_permissions says yes to everything)."""
    try:
        st = path.stat()
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    if os.geteuid() == 0:
        return bool(st.st_mode & 0o111)
    if st.st_uid == os.geteuid():
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == os.getegid() or st.st_gid in os.getgroups():
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


# --- running ----------------------------------------------------------------------------------


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


@contextlib.contextmanager
def _signals_to(process: subprocess.Popen[bytes]) -> Iterator[None]:
    """Like system(3): ignore SIGINT/SIGQUIT while the child runs, forward SIGTERM/SIGHUP."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)

    saved = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
             signal.SIGQUIT: signal.signal(signal.SIGQUIT, signal.SIG_IGN),
             signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
             signal.SIGHUP: signal.signal(signal.SIGHUP, forward)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def _launch(invocation: Invocation, runner: str) -> int:
    """Start the invocation with inherited stdio and wait; the command's exit status."""
    try:
        process = subprocess.Popen(list(invocation.argv), env=dict(invocation.env))
    except OSError as exc:
        raise RunnerError(f"cannot start {runner} ({invocation.argv[0]}): {exc}") from exc
    with _signals_to(process):
        returncode = process.wait()
    return _exit_status(returncode)


# --- the runners ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApptainerRunner:
    """`apptainer exec` (or `singularity exec`) of the flat tree as a sandbox image."""

    executable: str
    name: str = "apptainer"

    def problem(self) -> str | None:
        return None if os.access(self.executable, os.X_OK) else f"{self.executable} not executable"

    def invocation(self, request: RunRequest) -> Invocation:
        _check_request(request)
        prefix = "SINGULARITYENV_" if self.name == "singularity" else "APPTAINERENV_"
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("APPTAINERENV_", "SINGULARITYENV_"))}
        wanted = parse_env(request.env or ()) | parse_env(request.extra_env)
        env.update({prefix + name: value for name, value in wanted.items()
                    if SHELL_NAME.match(name)})
        binds = [item for fqrn, host in request.cvmfs
                 for item in ("--bind", f"{host}:/cvmfs/{fqrn}:ro")]
        argv = (self.executable, "exec", "--containall", "--cleanenv", *binds,
                "--pwd", request.working_dir, str(request.root), *request.argv)
        return Invocation(argv, env)

    def run(self, request: RunRequest) -> int:
        return _launch(self.invocation(request), self.name)


@dataclass(frozen=True, slots=True)
class BwrapRunner:
    """bubblewrap with the image as a read-only root; see the module docstring for flags."""

    executable: str
    name: str = "bwrap"
    new_session: bool | None = None   # None: only when stdin is not a terminal
    share_net: bool = True   # False: no network at all (a start set recorded at ingest)

    def problem(self) -> str | None:
        """Try a trivial sandbox with the host's root: fails where user namespaces are off."""
        argv = [self.executable, "--ro-bind", "/", "/", "--unshare-all", "--share-net",
                "--die-with-parent", "--", "/bin/true"]
        try:
            result = subprocess.run(argv, capture_output=True, text=True,
                                    timeout=PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{self.executable} does not run: {exc}"
        if result.returncode != 0:
            message = result.stderr.strip() or f"exit status {result.returncode}"
            return (f"{self.executable} cannot create a sandbox as uid {os.geteuid()} "
                    f"(unprivileged user namespaces disabled?): {message}")
        return None

    def invocation(self, request: RunRequest) -> Invocation:
        _check_request(request)
        root = request.root
        if not (root / "proc").is_dir() or not (root / "dev").is_dir():
            raise RunnerError(f"{root} has no /proc or /dev directory to mount on (not a "
                              "root filesystem?)")
        argv: list[str] = [self.executable, *_root_of(root, cvmfs=bool(request.cvmfs)),
                           "--dev", "/dev", "--proc", "/proc"]
        if (root / "tmp").is_dir() and not (root / "tmp").is_symlink():
            argv += ["--tmpfs", "/tmp"]
        if request.cvmfs:  # a tmpfs first: bwrap makes the mount points in it
            argv += ["--tmpfs", "/cvmfs"]
            for fqrn, host in request.cvmfs:
                argv += ["--ro-bind", str(host), f"/cvmfs/{fqrn}"]
        argv += ["--unshare-all", *(["--share-net"] if self.share_net else []),
                 "--die-with-parent"]
        new_session = self.new_session
        if new_session is None:
            new_session = not _stdin_is_terminal()
        if new_session:
            argv.append("--new-session")
        for relative in HOST_FILES if self.share_net else ():
            host, inside = Path("/") / relative, root / relative
            if host.exists() and inside.is_file() and not inside.is_symlink():
                argv += ["--ro-bind", str(host), f"/{relative}"]
        if request.cvmfs and not _has_cvmfs_dir(root):
            argv += ["--remount-ro", "/"]  # the tmpfs root, once everything is made in it
        argv += ["--chdir", request.working_dir, "--"]

        env = _base_env(os.environ)
        command = list(request.argv)
        if request.env is not None:
            env.update(parse_env(request.env))
        elif (root / EXEC_ACTION).is_file():
            command = ["/" + EXEC_ACTION, *command]   # sources the image's env scripts
        env.update(parse_env(request.extra_env))
        return Invocation((*argv, *command), env)

    def run(self, request: RunRequest) -> int:
        return _launch(self.invocation(request), self.name)


def _has_cvmfs_dir(root: Path) -> bool:
    return (root / "cvmfs").is_dir() and not (root / "cvmfs").is_symlink()


def _root_of(root: Path, *, cvmfs: bool) -> list[str]:
    """The image read-only as /; when /cvmfs must be bound but the image has no such
    directory (a bind needs an existing target on a read-only root), a tmpfs root with
    each top-level entry of the image bound (symlinks copied) and an empty /cvmfs,
    remounted read-only at the end (`BwrapRunner.invocation`)."""
    if not cvmfs or _has_cvmfs_dir(root):
        return ["--ro-bind", str(root), "/"]
    argv = ["--tmpfs", "/"]
    for entry in sorted(root.iterdir()):
        if entry.is_symlink():
            argv += ["--symlink", os.readlink(entry), f"/{entry.name}"]
        else:
            argv += ["--ro-bind", str(entry), f"/{entry.name}"]
    return [*argv, "--dir", "/cvmfs"]


def _stdin_is_terminal() -> bool:
    try:
        return os.isatty(sys.stdin.fileno())
    except (AttributeError, ValueError, OSError):
        return False


# --- choosing ---------------------------------------------------------------------------------


def _make(name: str, executable: str) -> Runner:
    if name == "bwrap":
        return BwrapRunner(executable)
    return ApptainerRunner(executable, name=name)


def select_runner(preference: str | None = None, *,
                  which: Callable[[str], str | None] = shutil.which,
                  probe: bool = True) -> Runner:
    """The runner to use: `preference` ("apptainer", "singularity", "bwrap"; None or "auto"
    for the first usable of them in that order). `probe` also tries each candidate (bwrap:
    a trivial sandbox, milliseconds) and moves on when it cannot work here.
    """
    if preference in (None, "", "auto"):
        candidates: Sequence[str] = RUNNER_ORDER
    elif preference in RUNNER_ORDER:
        candidates = (preference,)
    else:
        raise RunnerError(f"unknown runner {preference!r}: choose one of "
                          f"{', '.join(RUNNER_ORDER)} or auto")
    reasons: list[str] = []
    for name in candidates:
        executable = which(EXECUTABLES[name])
        if executable is None:
            reasons.append(f"{EXECUTABLES[name]}: not found on PATH")
            continue
        runner = _make(name, executable)
        problem = runner.problem() if probe else None
        if problem is None:
            return runner
        reasons.append(f"{EXECUTABLES[name]}: {problem}")
    raise RunnerError("no usable container runner; looked for "
                      + "; ".join(reasons)
                      + f" (PATH={os.environ.get('PATH', '')}). Install Apptainer, or "
                      "bubblewrap (apt-get install bubblewrap).")


def run_image(root: Path, argv: Sequence[str], config: ImageConfig | None = None, *,
              preference: str | None = None, extra_env: Sequence[str] = (),
              cvmfs: Mapping[str, Path] | None = None) -> int:
    """Run `argv` in the flat image at `root` with the best runner; its exit status.
    `cvmfs`: repositories (fqrn -> host directory) to bind read-only at /cvmfs/<fqrn>.

    The whole of what `pycvmfs run` needs once the image path is resolved on the mount.
    """
    request = RunRequest.for_image(root, argv, config, extra_env=extra_env, cvmfs=cvmfs)
    runner = select_runner(preference)
    check_command(request)
    return runner.run(request)
