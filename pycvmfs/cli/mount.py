"""`pycvmfs mount FQRN MOUNTPOINT` and `pycvmfs umount [--force] MOUNTPOINT`.

Background by default: the command starts a detached serving process and returns once
the mount is ready (or prints why it failed, with a non-zero exit). `--foreground`
serves in this process until unmounted; Ctrl-C unmounts.

Neither command stats MOUNTPOINT before it knows from the mount table that nothing is
mounted there (a dead mount answers ENOTCONN, a hung one blocks): the arguments are
plain strings, not `click.Path`, which would stat them. `umount` detaches dead and hung
mounts (`pycvmfs.fs.mount.unmount`).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import subprocess
import sys
import tempfile
import time
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
def mount(fqrn: str, mountpoint: str, options: tuple[str, ...],
          config_files: tuple[Path, ...], foreground: bool, backend: str | None,
          detached: bool) -> None:
    """Mount repository FQRN at MOUNTPOINT (read-only, verified, on demand).

    Logs: CVMFS_USYSLOG=FILE (rotated), CVMFS_DEBUGLOG=FILE (everything), syslog when
    /dev/log exists; a background mount without any of them logs to
    CACHE_BASE/FQRN.log, a foreground one to stderr."""
    from pycvmfs.client import open_client
    from pycvmfs.config import load_config
    from pycvmfs.fs.limits import raise_open_files_limit
    from pycvmfs.fs.mount import check_fuse_usable, serve

    check_mount_point(mountpoint)
    overrides = overrides_of(options)
    config = load_config(fqrn, extra_files=config_files, overrides=overrides)
    check_fuse_usable()
    if not foreground:  # skipped lines etc.: shown here once, logged by the serving process
        for warning in config.warnings:
            click.echo(f"pycvmfs: warning: {warning}", err=True)
        mount_in_background(fqrn, Path(mountpoint), options, config_files, backend)
        return
    try:
        _configure_logging(config, detached)
    except OSError as exc:
        raise ConfigError(f"cannot write the log: {exc.filename}: {exc.strerror} (set "
                          "CVMFS_USYSLOG to a writable file, or CVMFS_CACHE_BASE to a "
                          "writable directory)") from None
    for warning in config.warnings:  # to the logs, and to stderr unless detached
        logging.getLogger(__name__).warning("configuration: %s", warning)
    _, capped = raise_open_files_limit(config.nfiles)
    if capped:
        logging.getLogger(__name__).warning("%s", capped)
    client = open_client(config)
    client.watcher.start()
    try:
        serve(client.vfs, str(mountpoint), backend=backend,
              kcache_timeout_s=float(config.kcache_timeout_s))
    finally:
        client.close()


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
    root.setLevel(logging.DEBUG)
    form = logging.Formatter(f"%(asctime)s pycvmfs[{config.fqrn}] %(levelname)s %(message)s")
    handlers: list[logging.Handler] = []
    usyslog = config.settings.get("CVMFS_USYSLOG")
    debuglog = config.settings.get("CVMFS_DEBUGLOG")
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
        syslog = logging.handlers.SysLogHandler(SYSLOG_SOCKET)
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
                        quiet: bool = False) -> None:
    """Start `pycvmfs mount --foreground` detached; return when the mount is ready. The
    serving process gets the mount point as the mount table will show it (so `pycvmfs
    umount` finds it by its command line)."""
    from pycvmfs.fs.mount import check_fuse_usable, mount_point_path, set_read_ahead

    check_fuse_usable()
    command = [sys.executable, "-m", "pycvmfs", "mount", fqrn, mount_point_path(mountpoint),
               "--foreground", "--detached"]
    for option in options:
        command += ["-o", option]
    for path in config_files:
        command += ["--config", str(path)]
    if backend:
        command += ["--backend", backend]
    with tempfile.TemporaryFile() as errors:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=errors, start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not os.path.ismount(mountpoint):
            if child.poll() is not None:
                errors.seek(0)
                raise ConfigError(_failure_of(errors.read().decode(errors="replace"))
                                  or f"mounting {fqrn} failed (exit {child.returncode})")
            if time.monotonic() > deadline:
                child.kill()
                raise ConfigError(f"mounting {fqrn} did not finish in {READY_TIMEOUT_S:.0f} s")
            time.sleep(0.05)
    set_read_ahead(str(mountpoint))  # ready means INIT is done: set now, not "soon"
    if not quiet:
        click.echo(f"mounted {fqrn} on {mountpoint} (pid {child.pid})")


def _failure_of(stderr: str) -> str:
    """The serving process's one-line error (its last `pycvmfs: ...` line, prefix
    dropped), else all it printed."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
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
