"""The configured client (`pycvmfs mount`) against repositories made by the reference tools.

One real nginx per module serves `oracle.local` and `legacy_aufs.cern.ch` (shared fixtures;
whitelists re-signed with the fixture's master key into a temporary copy when expired) and
the bundled `testdata/repo`. Each is mounted with every FUSE backend through the CLI as a
user would (configuration root, cache, `-o` options), walked with plain `os` calls and
compared line by line with the reference listing `expected-trunk.tsv` (for testdata/repo:
with `pycvmfs ls -lR`, the verifying no-FUSE reader). Tagged revisions mount with
`CVMFS_REPOSITORY_TAG`, and programs on a mounted repository execute.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest

from pycvmfs.cli.main import main
from pycvmfs.format.whitelist import parse_whitelist
from pycvmfs.fs.mount import BACKENDS
from tests.fixtures_path import (
    FIXTURES,
    LEGACY,
    LEGACY_FQRN,
    ORACLE,
    ORACLE_KEYS,
    ORACLE_REPO,
    requires_fixtures,
    unpack_legacy,
)
from tests.mounting import (
    DEMO_FQRN,
    DEMO_KEY,
    DEMO_REPO,
    NEEDS_PYFUSE3,
    CliMount,
    backend_params,
    cli_mount,
)
from tests.publish_helpers import Keys, run_publish
from tests.servers import NEEDS_FUSE_AND_NGINX, Nginx, shared_scratch
from tests.tree_listing import (
    expected_lines,
    expected_sha1s,
    mounted_file_sha1s,
    mounted_tree_lines,
)

pytestmark = [
    *NEEDS_FUSE_AND_NGINX,
]

ORACLE_FQRN = "oracle.local"
TAG_REV1 = "generic-2026-11-29T04:43:29.000Z"
TAG_REV2 = "generic-2026-11-29T04:43:34.000Z"
WHITELIST_MARGIN = dt.timedelta(hours=2)  # re-sign when it expires before the tests end
VARIANT_LINK = "/links/arch-lib"  # $(DEMO_ARCH:-x86_64)/lib in testdata/repo
DEMO_ARCH = "aarch64"


@dataclass(frozen=True)
class Served:
    """A repository nginx serves, and the master public key that verifies it."""

    fqrn: str
    storage: Path
    public_key: Path
    server_url: str  # CVMFS_SERVER_URL, with @fqrn@


# --- module setup: one nginx, world-readable copies where needed ----------------------------


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """A world-traversable scratch directory (nginx workers run as nobody)."""
    with shared_scratch("pycvmfs-client-fixtures-") as base:
        yield base


@pytest.fixture(scope="module")
def stratum1() -> Iterator[Nginx]:
    with Nginx() as server:
        yield server


def make_world_readable(top: Path) -> None:
    for path in [top, *top.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)


def whitelist_valid(storage: Path) -> bool:
    whitelist, _ = parse_whitelist((storage / ".cvmfswhitelist").read_bytes())
    return whitelist.is_valid_at(dt.datetime.now(dt.UTC) + WHITELIST_MARGIN)


def resign_whitelist(storage: Path, fqrn: str, keys_dir: Path) -> None:
    """`pycvmfs whitelist sign` with the fixture's master key, into a copy we own."""
    code = main(["whitelist", "sign", "--keys-dir", str(keys_dir), "--repo", fqrn,
                 "--storage", str(storage), "--days", "30"])
    assert code == 0
    assert whitelist_valid(storage)


def serve(server: Nginx, fqrn: str, storage: Path, public_key: Path) -> Served:
    url = server.publish(f"cvmfs/{fqrn}", storage)
    return Served(fqrn, storage, public_key, url.rsplit("/", 1)[0] + "/@fqrn@")


@pytest.fixture(scope="module")
def oracle(stratum1: Nginx, workdir: Path) -> Served:
    if not FIXTURES.is_dir():
        pytest.skip(f"shared fixtures not found at {FIXTURES}")
    storage = ORACLE_REPO
    if not whitelist_valid(storage):  # valid until 2026-12-29 04:00 UTC; never touch /shared
        storage = workdir / "oracle.local"
        shutil.copytree(ORACLE_REPO, storage, symlinks=True)
        make_world_readable(storage)
        resign_whitelist(storage, ORACLE_FQRN, ORACLE_KEYS)
    return serve(stratum1, ORACLE_FQRN, storage, ORACLE_KEYS / f"{ORACLE_FQRN}.pub")


@pytest.fixture(scope="module")
def legacy(stratum1: Nginx, workdir: Path) -> Served:
    if not FIXTURES.is_dir():
        pytest.skip(f"shared fixtures not found at {FIXTURES}")
    storage, keys_dir = unpack_legacy(workdir / "legacy")
    make_world_readable(workdir / "legacy")
    assert not whitelist_valid(storage)  # expired on 2015-11-20
    resign_whitelist(storage, LEGACY_FQRN, keys_dir)
    return serve(stratum1, LEGACY_FQRN, storage, keys_dir / f"{LEGACY_FQRN}.pub")


@pytest.fixture(scope="module")
def demo(stratum1: Nginx) -> Served:
    return serve(stratum1, DEMO_FQRN, DEMO_REPO, DEMO_KEY)


# --- helpers ----------------------------------------------------------------------------------


def client_env(tmp_path: Path) -> dict[str, str]:
    """An empty configuration root (no /etc/cvmfs) and a private HOME."""
    config_root = tmp_path / "etc-cvmfs"
    config_root.mkdir(exist_ok=True)
    return dict(os.environ, PYCVMFS_CONFIG_ROOT=str(config_root), HOME=str(tmp_path))


def mount_served(served: Served, tmp_path: Path, backend: str | None = None,
                 **options: str) -> AbstractContextManager[CliMount]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    settings = {
        "CVMFS_SERVER_URL": served.server_url,
        "CVMFS_PUBLIC_KEY": str(served.public_key),
        "CVMFS_HTTP_PROXY": "DIRECT",
        "CVMFS_CACHE_BASE": str(tmp_path / "cache"),
        "CVMFS_USE_GEOAPI": "no",
        "CVMFS_MAX_RETRIES": "1",
        "CVMFS_TIMEOUT_DIRECT": "5",
        **options,
    }
    return cli_mount(served.fqrn, mnt, env=client_env(tmp_path), options=settings,
                     backend=backend)


def reader_listing(served: Served, capsys: pytest.CaptureFixture[str],
                   tag: str | None = None) -> list[str]:
    """`pycvmfs ls -lR` of the served storage directory (no FUSE, every object verified)."""
    args = ["ls", "-lR", "-e", "hex", str(served.storage), "--keys", str(served.public_key),
            "--fqrn", served.fqrn]
    if tag:
        args += ["--tag", tag]
    capsys.readouterr()
    code = main(args)
    captured = capsys.readouterr()
    assert (code, captured.err) == (0, "")
    return captured.out.splitlines()


def check_root_xattrs(mnt: Path, fqrn: str, revision: int) -> None:
    """Magic xattrs are listed on the root (only there) and answer."""
    listed = os.listxattr(mnt)
    assert {"user.fqrn", "user.revision", "user.root_hash"} <= set(listed)
    assert os.getxattr(mnt, "user.fqrn") == fqrn.encode()
    assert os.getxattr(mnt, "user.revision") == str(revision).encode()


def unmount_cleanly(mount: CliMount) -> None:
    done = mount.unmount()
    assert done.returncode == 0, done.stderr
    assert not os.path.ismount(mount.mountpoint)
    assert mount.server_exited()


# --- the tree of each repository, both backends --------------------------------------------


@requires_fixtures
@pytest.mark.parametrize("backend", backend_params(*BACKENDS))
def test_oracle_tree_matches_reference(oracle: Served, tmp_path: Path, backend: str) -> None:
    with mount_served(oracle, tmp_path, backend) as mount:
        check_root_xattrs(mount.mountpoint, ORACLE_FQRN, 6)
        assert mounted_tree_lines(mount.mountpoint) == expected_lines(ORACLE)
        assert os.getxattr(mount.mountpoint / "docs" / "hello.txt", "user.foo") == b"bar"
        unmount_cleanly(mount)


@requires_fixtures
@pytest.mark.parametrize("backend", backend_params(*BACKENDS))
def test_legacy_tree_matches_reference(legacy: Served, tmp_path: Path, backend: str) -> None:
    with mount_served(legacy, tmp_path, backend) as mount:
        check_root_xattrs(mount.mountpoint, LEGACY_FQRN, 2)
        assert mounted_tree_lines(mount.mountpoint) == expected_lines(LEGACY)
        unmount_cleanly(mount)


@pytest.mark.parametrize("backend", backend_params(*BACKENDS))
def test_demo_tree_matches_reader(demo: Served, tmp_path: Path, backend: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    expected = reader_listing(demo, capsys)
    # the mount expands the variant symlink with the configuration (-o DEMO_ARCH=...);
    # the reader prints the raw target
    raw = next(line for line in expected if line.startswith(f"{VARIANT_LINK}\t"))
    fields = raw.split("\t")
    assert fields[6] == "$(DEMO_ARCH:-x86_64)/lib"
    fields[3], fields[6] = str(len(f"{DEMO_ARCH}/lib")), f"{DEMO_ARCH}/lib"
    expected[expected.index(raw)] = "\t".join(fields)
    with mount_served(demo, tmp_path, backend, DEMO_ARCH=DEMO_ARCH) as mount:
        check_root_xattrs(mount.mountpoint, DEMO_FQRN, 2)
        assert mounted_tree_lines(mount.mountpoint) == expected
        # (user.rawlink cannot be read here: the kernel answers ENODATA for user.* names on
        # anything but regular files and directories, before asking the filesystem)
        unmount_cleanly(mount)


# --- tagged revisions ---------------------------------------------------------------------------


@requires_fixtures
@pytest.mark.parametrize(("tag", "revision", "sums", "backend"), [
    pytest.param(TAG_REV1, 1, "expected-rev1.sha1", "pyfuse3", marks=NEEDS_PYFUSE3),
    (TAG_REV2, 2, "expected-rev2.sha1", "mfusepy"),
])
def test_oracle_generic_tag(oracle: Served, tmp_path: Path, tag: str, revision: int,
                            sums: str, backend: str) -> None:
    with mount_served(oracle, tmp_path, backend, CVMFS_REPOSITORY_TAG=tag) as mount:
        check_root_xattrs(mount.mountpoint, ORACLE_FQRN, revision)
        assert os.getxattr(mount.mountpoint, "user.tag") == tag.encode()
        assert mounted_file_sha1s(mount.mountpoint) == expected_sha1s(sums)


@requires_fixtures
def test_oracle_trunk_previous(oracle: Served, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    expected = reader_listing(oracle, capsys, tag="trunk-previous")
    with mount_served(oracle, tmp_path, CVMFS_REPOSITORY_TAG="trunk-previous") as mount:
        check_root_xattrs(mount.mountpoint, ORACLE_FQRN, 5)
        assert mounted_tree_lines(mount.mountpoint) == expected
        assert expected != expected_lines(ORACLE)  # revision 5 is not trunk


# --- programs run from the mount ----------------------------------------------------------------


SCRIPT = '#!/bin/sh\necho "hello from $(basename "$0") $*"\nexec "$(dirname "$0")/true"\n'


@pytest.fixture(scope="module")
def tools(stratum1: Nginx, workdir: Path, keys: Keys) -> Served:
    """A tiny repository with a copy of /bin/true and a shell script, published here."""
    true = shutil.which("true")
    if true is None:
        pytest.skip("no `true` binary to copy")
    tree = workdir / "tools-tree"
    (tree / "bin").mkdir(parents=True)
    shutil.copy2(os.path.realpath(true), tree / "bin" / "true")
    (tree / "bin" / "hello.sh").write_text(SCRIPT)
    for name in ("true", "hello.sh"):
        (tree / "bin" / name).chmod(0o755)
    storage = workdir / "tools-storage"
    run_publish(tree, storage, keys, chunking=None)
    make_world_readable(storage)
    return serve(stratum1, keys.fqrn, storage, keys.public_key_file)


@pytest.mark.parametrize("backend", backend_params(*BACKENDS))
def test_binary_in_the_mount_executes(tools: Served, tmp_path: Path, backend: str) -> None:
    with mount_served(tools, tmp_path, backend) as mount:
        binary = mount.mountpoint / "bin" / "true"
        script = mount.mountpoint / "bin" / "hello.sh"
        assert stat.S_IMODE(binary.stat().st_mode) == 0o755
        assert subprocess.run([str(binary)], timeout=30).returncode == 0
        done = subprocess.run([str(script), "a", "b"], capture_output=True, text=True,
                              timeout=30)
        assert (done.returncode, done.stdout, done.stderr) == (0, "hello from hello.sh a b\n", "")
        unmount_cleanly(mount)
