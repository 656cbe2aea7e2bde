"""`pycvmfs mount FQRN MOUNTPOINT` and `pycvmfs umount MOUNTPOINT`.

Background by default: the command starts a detached serving process and returns once
the mount is ready (or prints why it failed, with a non-zero exit). `--foreground`
serves in this process until unmounted; Ctrl-C unmounts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from pycvmfs.errors import ConfigError

READY_TIMEOUT_S = 60.0  # trust chain + root catalog over a slow link


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
@click.option("--backend", default=None, help="FUSE binding: pyfuse3 or mfusepy.")
def mount(fqrn: str, mountpoint: Path, options: tuple[str, ...],
          config_files: tuple[Path, ...], foreground: bool, backend: str | None) -> None:
    """Mount repository FQRN at MOUNTPOINT (read-only, verified, on demand)."""
    from pycvmfs.client import open_client
    from pycvmfs.config import load_config
    from pycvmfs.fs.mount import serve

    if not mountpoint.is_dir():
        raise ConfigError(f"mount point {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise ConfigError(f"{mountpoint} is already a mount point")
    overrides = overrides_of(options)
    config = load_config(fqrn, extra_files=config_files, overrides=overrides)
    if not foreground:
        _mount_in_background(fqrn, mountpoint, options, config_files, backend)
        return
    client = open_client(config)
    client.watcher.start()
    try:
        serve(client.vfs, str(mountpoint), backend=backend,
              kcache_timeout_s=float(config.kcache_timeout_s))
    finally:
        client.close()


def _mount_in_background(fqrn: str, mountpoint: Path, options: tuple[str, ...],
                         config_files: tuple[Path, ...], backend: str | None) -> None:
    """Start `pycvmfs mount --foreground` detached; return when the mount is ready."""
    command = [sys.executable, "-m", "pycvmfs", "mount", fqrn, str(mountpoint), "--foreground"]
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
