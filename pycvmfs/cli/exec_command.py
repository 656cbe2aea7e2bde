"""`pycvmfs exec [options] REPO [REPO...] -- CMD [ARGS...]`: CMD with the repositories at
`/cvmfs/<fqrn>`, without root (what cvmfsexec gives HPC users).

This process enters a private user + mount namespace with a root of its own in which
`/cvmfs` is a fresh directory (`pycvmfs.fs.userns`), forks one serving process per
repository there (`pycvmfs mount`'s own `serve_mount`: same configuration hierarchy, `-o`,
`--config`, cache base and verification), runs CMD as its child and waits. The serving
processes are in sessions of their own (a Ctrl-C at the terminal reaches CMD, not them) and
die with this process (parent-death signal); this process is the subreaper of whatever CMD
leaves running. When CMD ends, however it ends, the mounts are detached, the serving
processes ended, CMD's leftovers ended, and the exit status is CMD's (128 + N for a death
by signal N; 127 when CMD is not found, 126 when it cannot be run, as a shell says).
SIGINT/SIGTERM/SIGHUP sent to this process are passed to CMD (not the ones the terminal
already sent to the whole foreground group). Nothing is mounted on the host: the
namespace ends with its last process.

Where user namespaces are refused, one line names the sysctl to ask for, and the
repositories are mounted with `pycvmfs mount` under `~/cvmfs/<fqrn>` instead (paths are
then not at /cvmfs), and unmounted when CMD ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from pycvmfs.cli.mount import (
    READY_MARK,
    READY_TIMEOUT_S,
    _backend,
    _read_until_ready,
    _reported,
    not_ready,
    overrides_of,
    report_serving,
)
from pycvmfs.errors import ConfigError

if TYPE_CHECKING:
    from pycvmfs.config import ClientConfig

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SI_KERNEL = 0x80  # siginfo si_code of a signal the kernel sent (a terminal's Ctrl-C)
NOT_FOUND, CANNOT_RUN = 127, 126  # as a shell says
WAIT_TICK_S = 0.5
END_GRACE_S = 5.0  # serving processes and CMD's leftovers get this long after SIGTERM
FALLBACK_DIR = "cvmfs"  # ~/cvmfs/<fqrn> where there is no namespace


def split_command(words: Sequence[str]) -> tuple[list[str], list[str]]:
    """`REPO [REPO...] -- CMD [ARGS...]` -> (repositories, command). An option among the
    repositories is one click did not know (unknown options are passed through to here)."""
    for word in words:
        if word == "--":
            break
        if word.startswith("-"):
            raise click.NoSuchOption(word)
    if "--" not in words:
        raise click.UsageError("expected REPO [REPO...] -- CMD [ARGS...] (options go "
                               "before the first REPO)")
    at = list(words).index("--")
    repos, command = list(words[:at]), list(words[at + 1:])
    if not repos:
        raise click.UsageError("no repository given before --")
    if not command:
        raise click.UsageError("no command given after --")
    for repo in repos:
        if "/" in repo or repo.startswith(".") or not repo.strip():
            raise click.UsageError(f"{repo!r} is not a repository name")
    if len(set(repos)) != len(repos):
        raise click.UsageError("a repository is named twice")
    return repos, command


def exit_status(returncode: int) -> int:
    """A child's status as a shell reports it: 128 + N for a death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def start_failure_status(exc: OSError) -> int:
    """127 for a command that does not exist, 126 for one that cannot be run."""
    return NOT_FOUND if isinstance(exc, (FileNotFoundError, NotADirectoryError)) \
        else CANNOT_RUN


def forwards(signo: int, code: int) -> bool:
    """Whether a signal this process got goes on to CMD: SIGINT/SIGTERM/SIGHUP, unless the
    kernel sent it (a terminal signals its whole foreground group, CMD included)."""
    return signo in FORWARDED and code != SI_KERNEL


@click.command("exec", context_settings={"ignore_unknown_options": True,
                                         "allow_interspersed_args": False})
@click.option("-o", "options", multiple=True, metavar="KEY=VALUE[,...]",
              help="Configuration overrides for every repository, as for `pycvmfs mount`.")
@click.option("--config", "config_files", multiple=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Extra configuration file(s), applied after the /etc/cvmfs hierarchy.")
@click.option("--backend", default=None, callback=lambda ctx, param, value: _backend(value),
              help="FUSE binding: lowlevel, pyfuse3 or mfusepy (default: the first that loads).")
@click.argument("words", nargs=-1, type=click.UNPROCESSED,
                metavar="REPO [REPO...] -- CMD [ARGS...]")
def exec_command(options: tuple[str, ...], config_files: tuple[Path, ...],
                 backend: str | None, words: tuple[str, ...]) -> int:
    """Run CMD with each REPO mounted at /cvmfs/REPO in a private namespace (no root
    needed where unprivileged user namespaces are allowed); its exit status is CMD's.
    Options go before the first REPO. Where user namespaces are refused, the repositories
    are mounted under ~/cvmfs/REPO instead, with a message."""
    from pycvmfs.config import load_config
    from pycvmfs.fs import userns
    from pycvmfs.fs.mount import check_fuse_usable

    repos, command = split_command(words)
    overrides = overrides_of(options)
    configs = [load_config(fqrn, extra_files=config_files, overrides=overrides)
               for fqrn in repos]
    for config in configs:
        for warning in config.warnings:
            click.echo(f"pycvmfs: warning: {warning}", err=True)
    as_root = os.geteuid() == 0
    refused = None if as_root else userns.refusal()
    if refused is None:
        check_fuse_usable(through_fusermount=False)
        try:
            userns.enter(as_root=as_root)
        except OSError as exc:
            if as_root:
                raise ConfigError(f"cannot create a mount namespace: {exc.strerror}") from None
            refused = userns.explain(exc)
    if refused is not None:
        return _fallback(refused, configs, command, options, config_files, backend)
    userns.private_root()
    userns.prctl(userns.PR_SET_CHILD_SUBREAPER, 1)
    serving: list[Serving] = []
    try:
        for config in configs:
            mountpoint = f"/{userns.CVMFS}/{config.fqrn}"
            os.mkdir(mountpoint, 0o755)
            serving.append(start_serving(config, mountpoint, backend))
        return run_command(command)
    finally:
        end_serving(serving, userns.detach)


@dataclass(frozen=True, slots=True)
class Serving:
    pid: int
    mountpoint: str


def start_serving(config: ClientConfig, mountpoint: str, backend: str | None) -> Serving:
    """Fork a process serving `config`'s repository at `mountpoint` (in a session of its
    own, ended if this process dies) and wait until the mount answers."""
    from pycvmfs.cli.main import exit_code_of
    from pycvmfs.cli.mount import serve_mount
    from pycvmfs.fs import userns

    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - in the forked process (exercised end to end)
        code = 1
        try:
            os.close(reader)
            os.setsid()
            # `pycvmfs umount`, `run` and the mount checks find a serving process by its
            # command line naming the mount point relative to its working directory:
            # this process's names the repository, so it works from /cvmfs
            os.chdir(os.path.dirname(mountpoint))
            userns.prctl(userns.PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:
                os._exit(1)
            report_ready = report_serving(writer)
            mounted = threading.Event()

            def ready() -> None:
                report_ready()
                mounted.set()

            # serving runs in a thread: once mounted, this (the main) thread gives up its
            # capabilities, so that CMD, which has none, may look at this process in /proc
            # as it may at a `pycvmfs mount` (the kernel compares with the main thread's)
            codes: list[int] = []
            thread = threading.Thread(target=lambda: codes.append(exit_code_of(
                lambda: serve_mount(config, mountpoint, backend, detached=True,
                                    ready=ready))), name="serving")
            thread.start()
            signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)  # libfuse's to handle
            while thread.is_alive() and not mounted.wait(WAIT_TICK_S):
                pass
            if mounted.is_set() and os.getuid() != 0:
                userns.drop_capabilities()
            thread.join()
            code = codes[0] if codes else 1
        finally:
            os._exit(code)
    os.close(writer)
    try:
        said = _read_until_ready(reader, time.monotonic() + READY_TIMEOUT_S)
    finally:
        os.close(reader)
    if _reported(said, READY_MARK) is not None:
        return Serving(pid, mountpoint)
    _end_process(pid)
    raise not_ready(said, config.fqrn)


def _end_process(pid: int, grace_s: float = END_GRACE_S) -> None:
    """SIGTERM, then SIGKILL if it has not ended after `grace_s`; reaped."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] != 0:
                return
            time.sleep(0.01)
            continue
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def end_serving(serving: Sequence[Serving], detach: Callable[[str], object]) -> None:
    """Detach every mount, end every serving process, then whatever else is left among
    this process's children (CMD's orphans, inherited as subreaper)."""
    for item in serving:
        detach(item.mountpoint)
    for item in serving:
        _end_process(item.pid)
    for pid in _children():
        _end_process(pid, grace_s=1.0)


def _children() -> list[int]:
    """This process's children, from /proc/self/task/*/children."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):
                found += [int(pid) for pid in
                          Path(f"/proc/self/task/{task}/children").read_text().split()]
    return found


def _unblock_and_die_with_parent() -> None:  # pragma: no cover - runs in the child
    from pycvmfs.fs import userns

    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    with contextlib.suppress(OSError):
        userns.prctl(userns.PR_SET_PDEATHSIG, signal.SIGKILL)


def run_command(command: list[str], env: dict[str, str] | None = None) -> int:
    """Run `command` with inherited stdio and wait, passing signals on (module
    docstring); its exit status."""
    waited = {*FORWARDED, signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    try:
        try:
            child = subprocess.Popen(command, env=env,
                                     preexec_fn=_unblock_and_die_with_parent)
        except OSError as exc:
            status = start_failure_status(exc)
            reason = "command not found" if status == NOT_FOUND else exc.strerror
            click.echo(f"pycvmfs: {command[0]}: {reason}", err=True)
            return status
        while True:
            info = signal.sigtimedwait(waited, WAIT_TICK_S)
            if info is not None and forwards(info.si_signo, info.si_code):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, info.si_signo)
            returncode = child.poll()
            if returncode is not None:
                return exit_status(returncode)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, waited)


def _fallback(why: str, configs: Sequence[ClientConfig], command: list[str],
              options: tuple[str, ...], config_files: tuple[Path, ...],
              backend: str | None) -> int:
    """No namespace: `pycvmfs mount` under ~/cvmfs/<fqrn> for the time of CMD."""
    from pycvmfs.cli.mount import check_mount_point, mount_in_background
    from pycvmfs.fs.mount import inspect_mount, unmount

    base = Path.home() / FALLBACK_DIR
    click.echo(f"pycvmfs: {why}; mounting under {base} instead (paths are not at /cvmfs)",
               err=True)
    mounted: list[Path] = []
    servers: list[int] = []
    try:
        for config in configs:
            mountpoint = base / config.fqrn
            mountpoint.mkdir(parents=True, exist_ok=True)
            check_mount_point(mountpoint)
            mount_in_background(config.fqrn, mountpoint, options, config_files, backend,
                                quiet=True, config=config)
            mounted.append(mountpoint)
            state = inspect_mount(mountpoint)
            servers += state.pids if state is not None else ()
        return run_command(command)
    finally:
        for mountpoint in mounted:
            try:
                unmount(mountpoint)
            except ConfigError:  # busy (a leftover of CMD): detached
                try:
                    unmount(mountpoint, force=True)
                except ConfigError as exc:
                    click.echo(f"pycvmfs: warning: {exc}", err=True)
        _wait_gone(servers, END_GRACE_S)


def _wait_gone(pids: Sequence[int], timeout_s: float) -> None:
    """Wait (bounded) until the serving processes of unmounted mounts have exited."""
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.01)


def _alive(pid: int) -> bool:
    """Whether `pid` still runs; reaped if it is this process's child (a serving process
    `pycvmfs mount` started as `python -m pycvmfs mount --foreground` is)."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == 0
    except ChildProcessError:  # not ours
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


COMMANDS = [exec_command]
