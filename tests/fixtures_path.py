"""Where the shared reference fixtures live (`<repo root>/../shared/fixtures`).

Tests read them in place (never copy them into the project) and skip cleanly when the
folder is absent: decorate with `@requires_fixtures` or set `pytestmark = requires_fixtures`.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures"

ORACLE = FIXTURES / "oracle.local"
ORACLE_REPO = ORACLE / "repo"
ORACLE_KEYS = ORACLE / "keys"
LEGACY = FIXTURES / "legacy_aufs.cern.ch"
LEGACY_FQRN = "legacy_aufs.cern.ch"

requires_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"shared fixtures not found at {FIXTURES}"
)


def unpack(tarball: Path, dest: Path) -> Path:
    """Extract a fixture tarball into `dest` (safe 'data' filter) and return `dest`."""
    with tarfile.open(tarball) as tar:
        tar.extractall(dest, filter="data")
    return dest


def unpack_legacy(dest: Path) -> tuple[Path, Path]:
    """Unpack the legacy_aufs repository and its keys: (repository dir, keys dir)."""
    unpack(LEGACY / "legacy_aufs_repo.tar.gz", dest)
    unpack(LEGACY / "keys.tar.gz", dest)
    return dest / "srv" / "cvmfs" / LEGACY_FQRN, dest / "etc" / "cvmfs" / "keys"
