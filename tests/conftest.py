"""Fixtures shared by all tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.publish_helpers import FQRN, Keys


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    """One repository key set per test session (RSA key generation is slow-ish)."""
    from pycvmfs.publisher.keys import create_keys

    keys_dir: Path = tmp_path_factory.mktemp("keys")
    create_keys(FQRN, keys_dir)
    return Keys(FQRN, keys_dir)
