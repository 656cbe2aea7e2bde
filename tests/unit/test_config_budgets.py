"""PYCVMFS_MAX_CATALOG_MB: the catalog cap of a mount, read like every other setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from pycvmfs.config import MAX_CATALOG_MB_DEFAULT, ClientConfig, load_config
from pycvmfs.errors import ConfigError

FQRN = "atlas.example.org"


def load(tmp_path: Path, **overrides: str) -> ClientConfig:
    root = tmp_path / "etc"
    (root / "keys").mkdir(parents=True, exist_ok=True)
    (root / "keys" / "example.org.pub").write_text("k")
    return load_config(FQRN, config_root=root, environ={"HOME": "/home/u"}, is_root=False,
                       overrides={"CVMFS_SERVER_URL": "http://s1/cvmfs/@fqrn@", **overrides})


def test_default_and_override(tmp_path: Path) -> None:
    assert load(tmp_path).max_catalog_mb == MAX_CATALOG_MB_DEFAULT == 1024
    assert load(tmp_path, PYCVMFS_MAX_CATALOG_MB="64").max_catalog_mb == 64
    assert load(tmp_path, PYCVMFS_MAX_CATALOG_MB="").max_catalog_mb == 1024


@pytest.mark.parametrize("value", ["0", "-5", "lots"])
def test_bad_values_name_key_value_and_origin(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"PYCVMFS_MAX_CATALOG_MB=.*\(set in <-o>\)"):
        load(tmp_path, PYCVMFS_MAX_CATALOG_MB=value)
