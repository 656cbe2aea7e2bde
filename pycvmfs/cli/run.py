"""`pycvmfs run FQRN/IMAGE-PATH -- CMD ARGS...`: run a command in a flat image on CernVM-FS.

The repository is mounted first if it is not (in the background), at `CACHE_BASE/mnt/FQRN`,
and unmounted again when the command ends, however it ends (exit, error, Ctrl-C, SIGTERM or
SIGHUP); a mount that was there already is used and left alone, and stderr says where it is
and how to end it. With `--mount DIR` the mount is made there and stays for the next run
(stderr says so). `CACHE_BASE/mnt/FQRN` is opened as the cache is: never through a symlink,
never another user's directory. The image path is the public name DUCC publishes
(`images.example.org/registry.example.org/ns/name:tag`); its `.metadata/.../config.json`
gives the environment and working directory. The exit status is the command's; a command
the image does not have gives 127, one it cannot execute 126, as a shell does.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import click

from pycvmfs.errors import ConfigError, ImageError, PycvmfsError
from pycvmfs.images.runner import CommandNotRunnableError

CONFIG_FILE = "config.json"
METADATA = ".metadata"
MOUNT_DIR = "mnt"  # CACHE_BASE/mnt/FQRN
MOUNT_DIR_MODE = 0o755  # others may traverse, never write


@click.command("run")
@click.argument("image")
@click.argument("command", nargs=-1, required=True)
@click.option("--mount", "mount_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Mount the repository here (if it is not) and keep it mounted "
              "[default: CACHE_BASE/mnt/FQRN, unmounted when the command ends].")
@click.option("-o", "options", multiple=True, metavar="KEY=VALUE[,...]",
              help="Configuration overrides for mounting, as for `pycvmfs mount`.")
@click.option("--config", "config_files", multiple=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Extra configuration file(s) for mounting.")
@click.option("--runner", default=None,
              help="apptainer, singularity or bwrap [default: the first that works].")
@click.option("--env", "extra_env", multiple=True, metavar="NAME=VALUE",
              help="More environment for the command.")
@click.option("--cvmfs", "with_cvmfs", is_flag=True,
              help="Bind the repository (and any other mounted at /cvmfs here, as under "
              "`pycvmfs exec`) at /cvmfs/FQRN inside the container, so the image's paths "
              "into /cvmfs resolve.")
def run_command(image: str, command: tuple[str, ...], mount_dir: Path | None,
                options: tuple[str, ...], config_files: tuple[Path, ...], runner: str | None,
                extra_env: tuple[str, ...], with_cvmfs: bool = False) -> int:
    """Run COMMAND inside IMAGE (FQRN/IMAGE-PATH, e.g.
    unpacked.cern.ch/registry.hub.docker.com/library/centos:centos7)."""
    from pycvmfs.cli.mount import mount_in_background, overrides_of
    from pycvmfs.config import load_config
    from pycvmfs.fs.mount import mount_table
    from pycvmfs.images.runner import cvmfs_repositories, run_image
    from pycvmfs.images.singularity import ImageConfig

    fqrn, _, image_path = image.strip("/").partition("/")
    if not image_path:
        raise click.BadParameter(f"{image!r}: expected FQRN/IMAGE-PATH", param_hint="IMAGE")
    fix = "choose another --mount"
    keep = mount_dir is not None  # a mount point the user chose stays mounted
    if mount_dir is None:
        config = load_config(fqrn, extra_files=config_files, overrides=overrides_of(options))
        mount_dir = _default_mount_dir(config.cache_base, fqrn)
        fix = "pass --mount DIR, or set CVMFS_CACHE_BASE to a writable directory"
    mounted_here = not _mounted(mount_dir, fqrn)
    if mounted_here:
        try:
            mount_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the mount point {mount_dir}: {exc.strerror} "
                              f"({fix})") from None
        mount_in_background(fqrn, mount_dir, options, config_files, None, quiet=True)
        if keep:
            _say(f"mounted {fqrn} on {mount_dir}; it stays mounted for the next run "
                 f"(`pycvmfs umount {mount_dir}` ends it)")
    elif not keep:
        _say(f"using the mount of {fqrn} at {mount_dir}, which was there already; it stays "
             f"mounted (`pycvmfs umount {mount_dir}` ends it)")
    with _unmounted_at_exit(mount_dir if mounted_here and not keep else None):
        root = (mount_dir / image_path).resolve()
        if not root.is_relative_to(mount_dir.resolve()) or not root.is_dir():
            raise ImageError(f"{image}: no image there (looked for {mount_dir / image_path})")
        metadata = mount_dir / METADATA / image_path / CONFIG_FILE
        try:
            blob = json.loads(metadata.read_bytes())
        except (OSError, ValueError):
            blob = None  # older ingests: the image's .singularity.d/env scripts still apply
        image_config = ImageConfig.from_oci(blob) if isinstance(blob, dict) else None
        try:
            return run_image(root, list(command), image_config, preference=runner,
                             extra_env=list(extra_env),
                             cvmfs=cvmfs_repositories(fqrn, mount_dir, mount_table())
                             if with_cvmfs else None)
        except CommandNotRunnableError as exc:
            _say(str(exc))
            return exc.status


def _say(text: str) -> None:
    click.echo(f"pycvmfs: run: {text}", err=True)


@contextmanager
def _unmounted_at_exit(mount_dir: Path | None) -> Iterator[None]:
    """Unmount `mount_dir` (None: nothing) when the block ends, however it ends: SIGTERM
    and SIGHUP end it as an exception (exit status 128 + N), as Ctrl-C does. While the
    container runs, the runner forwards those signals to it instead (runner._signals_to),
    so the block ends when the container does. A mount still in use (another `pycvmfs
    run` found it meanwhile) is left, and stderr says so."""
    if mount_dir is None:
        yield
        return
    from pycvmfs.fs.mount import unmount

    def end(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    saved = {signum: signal.signal(signum, end) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        try:
            unmount(mount_dir)
        except PycvmfsError as exc:
            _say(f"{mount_dir} stays mounted: {exc}")


def _default_mount_dir(cache_base: Path, fqrn: str) -> Path:
    """`CACHE_BASE/mnt/FQRN`, checked as the cache is (`cache.safe_dir`): the base may be a
    shared sticky directory, but `mnt` and the mount point must be the user's, never a
    symlink (another user's mount there would have us run their image). An existing mount
    (another file system under `mnt`) is left for `_mounted` to identify."""
    from pycvmfs.cache.safe_dir import check_name, open_directory

    try:
        check_name(fqrn)
    except ValueError:
        raise ConfigError(f"{fqrn!r} is not a repository name") from None
    with open_directory(cache_base / MOUNT_DIR, base=cache_base, create=True,
                        mode=MOUNT_DIR_MODE) as mnt:
        try:
            st = mnt.lstat(fqrn)
        except OSError:  # a dead mount answers ENOTCONN: mounting there says what to do
            return mnt.path / fqrn
        if st is None or st.st_dev == mnt.device:  # not mounted: must be ours
            mnt.subdir(fqrn, create=True, mode=MOUNT_DIR_MODE).close()
        return mnt.path / fqrn


def _mounted(mount_dir: Path, fqrn: str) -> bool:
    """Whether `mount_dir` is a pycvmfs/cvmfs mount of `fqrn` already; asked of the mount
    table first (a dead or hung mount there is named, not stat-ed)."""
    from pycvmfs.cli.mount import check_mount_point
    from pycvmfs.fs.mount import Health, inspect_mount

    state = inspect_mount(mount_dir)
    if state is None:
        return False
    if state.health is not Health.SERVING:
        check_mount_point(mount_dir)  # raises: dead or hung mount, or another file system
    if state.entry.source == f"cvmfs2#{fqrn}":
        return True
    try:
        return os.getxattr(mount_dir, "user.fqrn").decode() == fqrn
    except OSError:
        return False


COMMANDS = [run_command]
