"""`pycvmfs mount FQRN MOUNTPOINT` and `pycvmfs umount MOUNTPOINT`.

Background by default: the command starts a detached serving process and returns once
the mount is ready (or prints why it failed, with a non-zero exit). `--foreground`
serves in this process until unmounted; Ctrl-C unmounts.
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
@click.argument("mountpoint", type=click.Path(file_okay=False, path_type=Path))
@click.option("-o", "options", multiple=True, metavar="KEY=VALUE[,...]",
              help="Configuration overrides, e.g. -o CVMFS_HTTP_PROXY=DIRECT.")
@click.option("--config", "config_files", multiple=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Extra configuration file(s), applied after the /etc/cvmfs hierarchy.")
@click.option("--foreground", is_flag=True, help="Serve in this process until unmounted.")
@click.option("--backend", default=None,
              help="FUSE binding: lowlevel, pyfuse3 or mfusepy (default: the first that loads).")
@click.option("--detached", is_flag=True, hidden=True,
              help="Set by the background mount for its serving process: log to files.")
def mount(fqrn: str, mountpoint: Path, options: tuple[str, ...],
          config_files: tuple[Path, ...], foreground: bool, backend: str | None,
          detached: bool) -> None:
    """Mount repository FQRN at MOUNTPOINT (read-only, verified, on demand).

    Logs: CVMFS_USYSLOG=FILE (rotated), CVMFS_DEBUGLOG=FILE (everything), syslog when
    /dev/log exists; a background mount without any of them logs to
    CACHE_BASE/FQRN.log, a foreground one to stderr."""
    from pycvmfs.client import open_client
    from pycvmfs.config import load_config
    from pycvmfs.fs.limits import raise_open_files_limit
    from pycvmfs.fs.mount import serve

    if not mountpoint.is_dir():
        raise ConfigError(f"mount point {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise ConfigError(f"{mountpoint} is already a mount point")
    overrides = overrides_of(options)
    config = load_config(fqrn, extra_files=config_files, overrides=overrides)
    if not foreground:  # skipped lines etc.: shown here once, logged by the serving process
        for warning in config.warnings:
            click.echo(f"pycvmfs: warning: {warning}", err=True)
        mount_in_background(fqrn, mountpoint, options, config_files, backend)
        return
    _configure_logging(config, detached)
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
    """Start `pycvmfs mount --foreground` detached; return when the mount is ready."""
    from pycvmfs.fs.mount import set_read_ahead

    command = [sys.executable, "-m", "pycvmfs", "mount", fqrn, str(mountpoint), "--foreground",
               "--detached"]
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
                message = errors.read().decode(errors="replace").strip()
                raise ConfigError(message.removeprefix("pycvmfs: error: ")
                                  or f"mounting {fqrn} failed (exit {child.returncode})")
            if time.monotonic() > deadline:
                child.kill()
                raise ConfigError(f"mounting {fqrn} did not finish in {READY_TIMEOUT_S:.0f} s")
            time.sleep(0.05)
    set_read_ahead(str(mountpoint))  # ready means INIT is done: set now, not "soon"
    if not quiet:
        click.echo(f"mounted {fqrn} on {mountpoint} (pid {child.pid})")


@click.command("umount")
@click.argument("mountpoint", type=click.Path(file_okay=False, path_type=Path))
def umount(mountpoint: Path) -> None:
    """Unmount a pycvmfs mount (works for the user who mounted it)."""
    from pycvmfs.fs.mount import unmount

    if not os.path.ismount(mountpoint):
        raise ConfigError(f"{mountpoint} is not mounted")
    unmount(str(mountpoint))


COMMANDS = [mount, umount]
