"""`pycvmfs mount FQRN MOUNTPOINT` and `pycvmfs umount [--force] MOUNTPOINT`.

Background by default: the command starts a detached serving process (a fork of itself
when it can: `mount_in_background`) and returns once the mount is ready (or prints why it
failed, with a non-zero exit). `--foreground`
serves in this process until unmounted; Ctrl-C unmounts.

Neither command stats MOUNTPOINT before it knows from the mount table that nothing is
mounted there (a dead mount answers ENOTCONN, a hung one blocks): the arguments are
plain strings, not `click.Path`, which would stat them. `umount` detaches dead and hung
mounts (`pycvmfs.fs.mount.unmount`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from pycvmfs.cli.log_files import log_file_handler
from pycvmfs.errors import ConfigError

if TYPE_CHECKING:
    from pycvmfs.config import ClientConfig

READY_TIMEOUT_S = 60.0  # trust chain + root catalog over a slow link
SYSLOG_SOCKET = "/dev/log"
USYSLOG_BYTES = 500 * 1024  # the reference rotates its user syslog file at 500 kB
READY_MARK = b"\0pycvmfs-ready "  # a forked serving process reports readiness (no NUL in errors)
STARTED_MARK = b"\0pycvmfs-started "  # ... and its pid first (ended if it never gets ready)
NOTICE_MARK = b"\0pycvmfs-degraded "  # ... and, before ready, each degraded state
MAX_REPORT_BYTES = 64 * 1024  # what a failing serving process may say, kept


def _backend(value: str | None) -> str | None:
    """Check --backend names before anything is fetched (the binding loads only after the
    repository is open)."""
    from pycvmfs.fs.mount import BACKENDS

    for name in (value or "").split(","):
        if name.strip() and name.strip() not in BACKENDS:
            raise click.BadParameter(f"unknown FUSE backend {name.strip()!r} (choose from "
                                     f"{', '.join(BACKENDS)})", param_hint="--backend")
    return value


def overrides_of(options: tuple[str, ...]) -> dict[str, str]:
    """`-o K=V,K2=V2 -o K3=V3` -> a dict (later wins)."""
    result: dict[str, str] = {}
    for option in options:
        for item in option.split(","):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="-o")
            result[key.strip()] = value
    return result


@click.command("mount")
@click.argument("fqrn")
@click.argument("mountpoint")
@click.option("-o", "options", multiple=True, metavar="KEY=VALUE[,...]",
              help="Configuration overrides, e.g. -o CVMFS_HTTP_PROXY=DIRECT.")
@click.option("--config", "config_files", multiple=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Extra configuration file(s), applied after the /etc/cvmfs hierarchy.")
@click.option("--foreground", is_flag=True, help="Serve in this process until unmounted.")
@click.option("--backend", default=None, callback=lambda ctx, param, value: _backend(value),
              help="FUSE binding: lowlevel, pyfuse3 or mfusepy (default: the first that loads).")
@click.option("--detached", is_flag=True, hidden=True,
              help="Set by the background mount for its serving process: log to files.")
@click.option("-v", "--verbose", is_flag=True,
              help="Also list the CernVM-FS parameters set that pycvmfs does not use.")
def mount(fqrn: str, mountpoint: str, options: tuple[str, ...],
          config_files: tuple[Path, ...], foreground: bool, backend: str | None,
          detached: bool, verbose: bool) -> int:
    """Mount repository FQRN at MOUNTPOINT (read-only, verified, on demand).

    Configuration problems are said first (every bad value, one line each; unknown
    parameters warn), and so is every degraded state once mounted (serving offline from
    the cache, a Stratum-1 or proxy that failed, ...).
    Logs: CVMFS_USYSLOG=FILE (rotated), CVMFS_DEBUGLOG=FILE (everything), syslog when
    /dev/log exists; a background mount without any of them logs to
    CACHE_BASE/FQRN.log, a foreground one to stderr."""
    from pycvmfs.config import Severity, inspect_config
    from pycvmfs.fs.mount import check_fuse_usable

    check_mount_point(mountpoint)
    overrides = overrides_of(options)
    report = inspect_config(fqrn, extra_files=config_files, overrides=overrides)
    shown = [Severity.ERROR] + ([] if foreground else [Severity.WARNING])  # else logged
    shown += [Severity.NOTE] if verbose and not detached else []
    for problem in report.problems:
        if problem.severity in shown:
            click.echo(f"pycvmfs: {problem.severity}: {problem.message}", err=True)
    if report.config is None:
        return 1
    config = report.config
    check_fuse_usable()
    if not foreground:
        mount_in_background(fqrn, Path(mountpoint), options, config_files, backend,
                            config=config)
        return 0
    serve_mount(config, mountpoint, backend, detached=detached)
    return 0


def serve_mount(config: ClientConfig, mountpoint: str, backend: str | None, *,
                detached: bool, ready: Callable[[], None] | None = None) -> None:
    """Open the repository and serve it at `mountpoint` until unmounted (blocks); `ready`
    is called once the mount answers."""
    from pycvmfs.client import open_client
    from pycvmfs.fs.cpu_policy import serving_cpus
    from pycvmfs.fs.limits import limit_malloc_arenas, raise_open_files_limit
    from pycvmfs.fs.mount import serve

    try:
        _configure_logging(config, detached)
    except OSError as exc:
        raise ConfigError(f"cannot write the log: {exc.filename}: {exc.strerror} (set "
                          "CVMFS_USYSLOG to a writable file, or CVMFS_CACHE_BASE to a "
                          "writable directory)") from None
    for warning in config.warnings:  # to the logs, and to stderr unless detached
        logging.getLogger(__name__).warning("configuration: %s", warning)
    limit_malloc_arenas()
    cpus, unconfined = serving_cpus(config.cpu_affinity, config.cpu_policy)
    if unconfined:
        logging.getLogger(__name__).warning("%s", unconfined)
    _, capped = raise_open_files_limit(config.nfiles)
    if capped and config.origin("CVMFS_NFILES").startswith("<"):
        logging.getLogger(__name__).warning("%s", capped)  # the default: no one asked
        capped = None
    client = open_client(config)
    for notice in (*client.notices, *([capped] if capped else [])):
        say_degraded(notice, detached=detached)
    client.watcher.start()
    try:
        serve(client.vfs, str(mountpoint), backend=backend,
              kcache_timeout_s=float(config.kcache_timeout_s), ready=ready,
              no_open=config.no_open, cpus=cpus)
    finally:
        client.close()


def say_degraded(notice: str, *, detached: bool) -> None:
    """Log a degraded state; a detached serving process also tells `pycvmfs mount`, which
    reads its stderr until the mount is ready (`NOTICE_MARK` lines), so it reaches the
    terminal. One line: a newline in it would end the report early."""
    logging.getLogger(__name__).warning("%s", notice)
    if detached:
        line = " ".join(notice.split()).encode(errors="replace")[:MAX_REPORT_BYTES // 8]
        with contextlib.suppress(OSError):
            os.write(2, NOTICE_MARK + line + b"\n")


def notices_in(said: bytes) -> list[str]:
    """The degraded states a serving process reported (`say_degraded`)."""
    return [line[len(NOTICE_MARK):].decode(errors="replace")
            for line in said.split(b"\n") if line.startswith(NOTICE_MARK)]


def check_mount_point(mountpoint: str | Path) -> None:
    """MOUNTPOINT must be a directory with nothing mounted on it; asked of the mount table
    first, so a dead or hung mount there is named instead of stat-ed (which would fail
    with ENOTCONN or block)."""
    from pycvmfs.fs.mount import Health, inspect_mount

    state = inspect_mount(mountpoint)
    if state is not None and state.health in (Health.DEAD, Health.HUNG):
        raise ConfigError(f"{mountpoint} is still mounted (dead or hung mount: "
                          f"{state.describe()}): run pycvmfs umount --force {mountpoint}")
    if state is not None:
        raise ConfigError(f"{mountpoint} is already a mount point ({state.describe()}): "
                          "unmount it first, or choose another directory")
    if not Path(mountpoint).is_dir():
        raise ConfigError(f"mount point {mountpoint} is not a directory (create it first)")


def _configure_logging(config: ClientConfig, detached: bool) -> None:
    """Where the serving process logs (see `mount`'s help)."""
    root = logging.getLogger()
    debuglog = config.settings.get("CVMFS_DEBUGLOG")
    # DEBUG only for a debug log: otherwise every library's debug call (urllib3 logs
    # each request) would build a record that every handler then drops
    root.setLevel(logging.DEBUG if debuglog else logging.INFO)
    form = logging.Formatter(f"%(asctime)s pycvmfs[{config.fqrn}] %(levelname)s %(message)s")
    handlers: list[logging.Handler] = []
    usyslog = config.settings.get("CVMFS_USYSLOG")
    if usyslog:
        handlers.append(_file_handler(usyslog, logging.INFO, rotate=True))
    elif detached and not os.path.exists(SYSLOG_SOCKET):
        # directly in the cache base, which may be a shared sticky directory: the base
        # is checked as for the cache, the file must be ours (cli.log_files)
        handlers.append(_file_handler(str(config.cache_base / f"{config.fqrn}.log"),
                                      logging.INFO, rotate=True, in_cache_base=True))
    if debuglog:
        handlers.append(_file_handler(debuglog, logging.DEBUG, rotate=False))
    if os.path.exists(SYSLOG_SOCKET):
        from logging.handlers import SysLogHandler  # 10 ms of every mount, only with syslog

        syslog = SysLogHandler(SYSLOG_SOCKET)
        syslog.setLevel(logging.INFO)
        handlers.append(syslog)
    if not detached:
        stderr = logging.StreamHandler()
        stderr.setLevel(logging.WARNING)
        handlers.append(stderr)
    for handler in handlers:
        if handler.formatter is None:
            handler.setFormatter(form)
        root.addHandler(handler)


def _file_handler(path: str, level: int, *, rotate: bool,
                  in_cache_base: bool = False) -> logging.Handler:
    """A log file never written through a link or into another user's file
    (`cli.log_files`)."""
    handler = log_file_handler(path, in_cache_base=in_cache_base,
                               max_bytes=USYSLOG_BYTES if rotate else 0)
    handler.setLevel(level)
    return handler


def mount_in_background(fqrn: str, mountpoint: Path, options: tuple[str, ...],
                        config_files: tuple[Path, ...], backend: str | None, *,
                        quiet: bool = False, config: ClientConfig | None = None) -> None:
    """Start a detached serving process; return when the mount is ready. With the loaded
    `config`, the serving process is a fork of this one (one interpreter start, imports
    already done) when this process's command line names the mount point as the mount
    table will (`pycvmfs umount` finds serving processes by their command line) and runs
    no other thread; otherwise `pycvmfs mount --foreground` is started with it."""
    from pycvmfs.fs.mount import check_fuse_usable, mount_point_path, names_path, set_read_ahead

    check_fuse_usable()
    canonical = mount_point_path(mountpoint)
    if config is not None and threading.active_count() == 1 \
            and names_path(os.getpid(), canonical):
        _preload_serving_code(backend)
        pid, said = _fork_serving(config, canonical, backend)
    else:
        pid, said = _exec_serving(fqrn, canonical, options, config_files, backend)
    set_read_ahead(str(mountpoint))  # ready means INIT is done: set now, not "soon"
    for notice in notices_in(said):  # degraded, yet mounted: also said when quiet
        click.echo(f"pycvmfs: warning: {notice}", err=True)
    if not quiet:
        click.echo(f"mounted {fqrn} on {mountpoint} (pid {pid})")


def _preload_serving_code(backend: str | None) -> None:
    """Import what the serving process runs before forking it. Mount time is the same
    (one process imports either way), but a fork copies no page table entries of
    untouched file-backed code: the pages that importing touched (cryptography's
    library alone is 7 MB) stay out of the serving process's resident set, which holds
    only the code it runs (measured: 3 MB less RSS after `ls -lR` of an image)."""
    import pycvmfs.client  # noqa: F401
    from pycvmfs.fs.mount import load_backend

    with contextlib.suppress(ConfigError):  # the serving process says why, as before
        load_backend(backend)


def _exec_serving(fqrn: str, canonical: str, options: tuple[str, ...],
                  config_files: tuple[Path, ...], backend: str | None) -> tuple[int, bytes]:
    """`pycvmfs mount --foreground --detached` with the canonical mount point on its
    command line, polled until the mount is there; its pid and what it wrote until then
    (its degraded states are written before it mounts)."""
    command = [sys.executable, "-m", "pycvmfs", "mount", fqrn, canonical,
               "--foreground", "--detached"]
    for option in options:
        command += ["-o", option]
    for path in config_files:
        command += ["--config", str(path)]
    if backend:
        command += ["--backend", backend]
    import subprocess  # the launcher's: the serving process it starts does without them
    import tempfile

    with tempfile.TemporaryFile() as errors:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=errors, start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not os.path.ismount(canonical):
            if child.poll() is not None:
                errors.seek(0)
                raise ConfigError(_failure_of(errors.read())
                                  or f"mounting {fqrn} failed (exit {child.returncode})")
            if time.monotonic() > deadline:
                child.kill()
                raise ConfigError(f"mounting {fqrn} did not finish in {READY_TIMEOUT_S:.0f} s")
            time.sleep(0.05)
        errors.seek(0)
        return child.pid, errors.read(MAX_REPORT_BYTES)


def _fork_serving(config: ClientConfig, canonical: str, backend: str | None
                  ) -> tuple[int, bytes]:
    """Fork twice (the serving process belongs to init, not to this command, which may go
    on running a container) and wait until it reports the mount ready on a pipe, which is
    also its stderr until then; its pid and what it wrote (degraded states among it). EOF
    without the report: it failed, and what it wrote is the reason."""
    from pycvmfs.cli.main import exit_code_of

    sys.stdout.flush()
    sys.stderr.flush()
    reader, writer = os.pipe()
    middle = os.fork()
    if middle == 0:  # pragma: no cover - in the forked processes (exercised end to end)
        code = 1
        try:
            os.close(reader)
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            ready = report_serving(writer)
            code = exit_code_of(lambda: serve_mount(config, canonical, backend,
                                                    detached=True, ready=ready))
        finally:
            os._exit(code)
    os.close(writer)
    try:
        os.waitpid(middle, 0)
        said = _read_until_ready(reader, time.monotonic() + READY_TIMEOUT_S)
    finally:
        os.close(reader)
    serving = _reported(said, READY_MARK)
    if serving is not None:
        return serving, said
    if said.endswith(b"\0timeout"):
        started = _reported(said, STARTED_MARK)
        if started is not None:  # as the exec path does: a mount that hangs is ended
            with contextlib.suppress(ProcessLookupError):
                os.kill(started, signal.SIGKILL)
    raise not_ready(said, config.fqrn)


def report_serving(writer: int) -> Callable[[], None]:
    """In a forked serving process: say its pid on pipe `writer`, which becomes its stderr
    until the mount is ready (so a failure's one line, and the degraded states, reach the
    command waiting on the pipe); stdin and stdout go to /dev/null. Returns the `ready`
    callback for `serve_mount`: it reports the pid ready and moves stderr to /dev/null."""
    os.write(writer, STARTED_MARK + str(os.getpid()).encode() + b"\n")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(writer, 2)

    def ready() -> None:
        os.write(writer, READY_MARK + str(os.getpid()).encode() + b"\n")
        os.dup2(devnull, 2)  # from now on it logs to its files only
        os.close(writer)

    return ready


def not_ready(said: bytes, fqrn: str) -> ConfigError:
    """Why a forked serving process never reported ready: the deadline passed, or the one
    line it wrote before it ended."""
    if said.endswith(b"\0timeout"):
        return ConfigError(f"mounting {fqrn} did not finish in {READY_TIMEOUT_S:.0f} s")
    return ConfigError(_failure_of(said) or f"mounting {fqrn} failed")


def _reported(said: bytes, mark: bytes) -> int | None:
    """The pid the serving process wrote after `mark`, if it did."""
    if mark not in said:
        return None
    number = said.split(mark, 1)[1].split(b"\n", 1)[0]
    return int(number) if number.isdigit() else None


def _read_until_ready(fd: int, deadline: float) -> bytes:
    """What the serving process wrote until it reported ready or closed the pipe (ended),
    at most `MAX_REPORT_BYTES`; ends in "\\0timeout" if the deadline passed first."""
    said = b""
    while READY_MARK not in said or not said.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return said + b"\0timeout"
        chunk = os.read(fd, 4096)
        if not chunk:
            return said
        said = (said + chunk)[-MAX_REPORT_BYTES:]
    return said


def _failure_of(stderr: bytes) -> str:
    """The serving process's one-line error (its last `pycvmfs: ...` line, prefix
    dropped), else all it printed; its pid and degraded-state lines are not part of it."""
    text = b"\n".join(line for line in stderr.split(b"\n")
                      if not line.startswith((STARTED_MARK, NOTICE_MARK)))
    lines = [line.strip() for line in text.decode(errors="replace").splitlines()
             if line.strip()]
    for line in reversed(lines):
        if line.startswith("pycvmfs: "):
            return line.removeprefix("pycvmfs: ").removeprefix("error: ")
    return " ".join(lines)


@click.command("umount")
@click.argument("mountpoint")
@click.option("--force", is_flag=True,
              help="Detach at once: abort the FUSE connection and unmount lazily, without "
              "the polite unmount first (for a hung mount, or a busy one).")
def umount(mountpoint: str, force: bool) -> None:
    """Unmount a pycvmfs mount (works for the user who mounted it). A dead or hung mount
    (its serving process gone or stopped) is detached; MOUNTPOINT is never stat-ed."""
    from pycvmfs.fs.mount import unmount

    click.echo(unmount(mountpoint, force=force))


COMMANDS = [mount, umount]
