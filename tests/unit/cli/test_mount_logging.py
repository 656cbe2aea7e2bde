"""Where and at which level the serving process logs (`cli.mount._configure_logging`):
DEBUG records are built only when CVMFS_DEBUGLOG asks for them."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycvmfs.cli import mount
from pycvmfs.config import load_config
from tests.publish_helpers import Keys


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield root
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("debug", [False, True])
def test_debug_records_only_for_a_debug_log(tmp_path: Path, keys: Keys, debug: bool,
                                            root_logger: logging.Logger,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mount, "SYSLOG_SOCKET", str(tmp_path / "no-syslog"))
    (tmp_path / "etc").mkdir()
    overrides = {"CVMFS_SERVER_URL": "http://127.0.0.1:9/cvmfs/@fqrn@",
                 "CVMFS_HTTP_PROXY": "DIRECT", "CVMFS_PUBLIC_KEY": str(keys.public_key_file),
                 "CVMFS_CACHE_BASE": str(tmp_path / "cache"),
                 "CVMFS_USYSLOG": str(tmp_path / "mount.log")}
    if debug:
        overrides["CVMFS_DEBUGLOG"] = str(tmp_path / "debug.log")
    config = load_config(keys.fqrn, config_root=tmp_path / "etc", environ={}, is_root=True,
                         overrides=overrides)
    mount._configure_logging(config, detached=True)
    assert root_logger.isEnabledFor(logging.DEBUG) is debug
    logging.getLogger("urllib3.connectionpool").debug("a request")
    logging.getLogger("pycvmfs.test").info("an event")
    for handler in root_logger.handlers:
        handler.flush()
    assert "an event" in (tmp_path / "mount.log").read_text()
    if debug:
        assert "a request" in (tmp_path / "debug.log").read_text()
