"""The reader over real HTTP: the oracle.local fixture served by nginx as a Stratum-1."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

from pycvmfs.cli.main import main
from pycvmfs.errors import FetchError
from pycvmfs.network.transport import USER_AGENT
from pycvmfs.repository.network_source import NetworkSource
from pycvmfs.repository.source import open_source
from tests.fixtures_path import ORACLE, ORACLE_KEYS, ORACLE_REPO, requires_fixtures
from tests.servers import Nginx, free_port, nginx_binary

pytestmark = [
    requires_fixtures,
    pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed"),
]

NOW_ARG = "2026-12-01T00:00Z"  # fixture whitelist expires 2026-12-29 04:00 UTC


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with Nginx() as server:
        yield server.publish("cvmfs/oracle.local", ORACLE_REPO)


def test_ls_long_recursive_over_http(base_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ls", "-lR", "-e", "hex", base_url, "--keys", str(ORACLE_KEYS),
                 "--now", NOW_ARG]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    expected = (ORACLE / "expected-trunk.tsv").read_text().splitlines()
    assert captured.out.splitlines() == expected


def test_http_source_errors(base_url: str) -> None:
    source = open_source(base_url)
    assert isinstance(source, NetworkSource)
    try:
        assert source.fetch(".cvmfswhitelist").startswith(b"2026")
        with pytest.raises(FetchError, match="404"):
            source.fetch("data/00/does-not-existC")
        with pytest.raises(FetchError, match="must be relative"):
            source.fetch("../../etc/passwd")
    finally:
        source.close()
    assert USER_AGENT.startswith("cvmfs Fuse pycvmfs/")


def test_connection_refused_is_fetch_error() -> None:
    source = open_source(f"http://127.0.0.1:{free_port()}/cvmfs/none")
    with pytest.raises(FetchError, match="127.0.0.1"):
        source.fetch(".cvmfspublished")
    source.close()


def test_ring_of_urls_fails_over(base_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    ring = f"http://127.0.0.1:{free_port()}/cvmfs/oracle.local;{base_url}"
    assert main(["ls", ring, "/", "--fqrn", "oracle.local", "--keys", str(ORACLE_KEYS),
                 "--now", NOW_ARG]) == 0
    assert "sw" in capsys.readouterr().out.split()


def test_tag_over_http(base_url: str, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    code = main(["cat", base_url, "/sw/v1/README", "--keys", str(ORACLE_KEYS),
                 "--tag", "generic-2026-11-29T04:43:29.000Z", "--now", NOW_ARG])
    assert code == 0
    assert len(capsysbinary.readouterr().out) == 12
    assert dt.datetime.fromisoformat(NOW_ARG).year == 2026
