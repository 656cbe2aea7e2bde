"""`pycvmfs run FQRN/IMAGE-PATH -- CMD ARGS...`: run a command in a flat image on CernVM-FS.

The repository is mounted first if it is not (in the background, at `--mount DIR` or
`CACHE_BASE/mnt/FQRN`, and left mounted so the next run starts warm; `pycvmfs umount`
ends it). `CACHE_BASE/mnt/FQRN` is opened as the cache is: never through a symlink,
never another user's directory. The image path is the public name DUCC publishes
(`images.example.org/registry.example.org/ns/name:tag`); its `.metadata/.../config.json`
gives the environment and working directory. The exit status is the command's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from pycvmfs.errors import ConfigError, ImageError

CONFIG_FILE = "config.json"
METADATA = ".metadata"
MOUNT_DIR = "mnt"  # CACHE_BASE/mnt/FQRN
MOUNT_DIR_MODE = 0o755  # others may traverse, never write


@click.command("run")
@click.argument("image")
@click.argument("command", nargs=-1, required=True)
@click.option("--mount", "mount_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Where the repository is (or gets) mounted.")
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
        raise ConfigError(f"{image}: expected FQRN/IMAGE-PATH")
    fix = "choose another --mount"
    if mount_dir is None:
        config = load_config(fqrn, extra_files=config_files, overrides=overrides_of(options))
        mount_dir = _default_mount_dir(config.cache_base, fqrn)
        fix = "pass --mount DIR, or set CVMFS_CACHE_BASE to a writable directory"
    if not _mounted(mount_dir, fqrn):
        try:
            mount_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the mount point {mount_dir}: {exc.strerror} "
                              f"({fix})") from None
        mount_in_background(fqrn, mount_dir, options, config_files, None, quiet=True)
    root = (mount_dir / image_path).resolve()
    if not root.is_relative_to(mount_dir.resolve()) or not root.is_dir():
        raise ImageError(f"{image}: no image there (looked for {mount_dir / image_path})")
    metadata = mount_dir / METADATA / image_path / CONFIG_FILE
    try:
        blob = json.loads(metadata.read_bytes())
    except (OSError, ValueError):
        blob = None  # older ingests: the image's .singularity.d/env scripts still apply
    image_config = ImageConfig.from_oci(blob) if isinstance(blob, dict) else None
    return run_image(root, list(command), image_config, preference=runner,
                     extra_env=list(extra_env),
                     cvmfs=cvmfs_repositories(fqrn, mount_dir, mount_table())
                     if with_cvmfs else None)


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
