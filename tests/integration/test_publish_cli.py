"""The publisher's command line: output, progress on a terminal, whitelist re-signing,
errors as one clear line and exit code 1."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pycvmfs.cli.main import main
from pycvmfs.format.whitelist import parse_whitelist
from pycvmfs.publisher.kept import keep_published
from tests.publish_helpers import Keys, make_full_tree

REPO_ROOT = Path(__file__).resolve().parents[2]


def _publish_args(source: Path, storage: Path, keys: Keys, *extra: str) -> list[str]:
    return ["publish", str(source), "--repo", keys.fqrn, "--storage", str(storage),
            "--keys-dir", str(keys.keys_dir), *extra]


def test_publish_command(tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    source = make_full_tree(tmp_path / "src")
    args = _publish_args(source, tmp_path / "repo", keys, "--tag", "t1", "--hash", "shake128",
                         "--chunk-sizes", "16K,32K,64K", "--ttl", "90")
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert err == ""  # no progress bar when stderr is not a terminal
    assert re.search(r"published test.pycvmfs.org revision 1 \(root catalog [0-9a-f]{40}"
                     r"-shake128\)", out)
    assert "tagged 't1'" in out and "MB/s" in out and "files/s" in out
    assert main(_publish_args(source, tmp_path / "repo", keys, "--tag", "t1")) == 1
    assert "tag 't1' already exists" in capsys.readouterr().err
    keep_published(source, "nested")  # a stub: the published catalog is grafted
    assert main(_publish_args(source, tmp_path / "repo", keys)) == 0
    assert "catalogs kept from the previous revision (.pycvmfs-kept stubs): 1" in \
        capsys.readouterr().out


@pytest.mark.parametrize("bad", [["--chunk-sizes", "1,2"], ["--hash", "md5"],
                                 ["--owner", "root"]])
def test_bad_options(tmp_path: Path, keys: Keys, bad: list[str]) -> None:
    assert main(_publish_args(tmp_path, tmp_path / "repo", keys, *bad)) == 2


@pytest.mark.skipif(shutil.which("script") is None, reason="needs script(1) for a terminal")
def test_progress_on_a_terminal(tmp_path: Path, keys: Keys) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for i in range(50):
        (source / f"f{i}").write_bytes(bytes([i]) * 100_000)
    command = " ".join([sys.executable, "-m", "pycvmfs",
                        *_publish_args(source, tmp_path / "repo", keys)])
    proc = subprocess.run(["script", "-qec", command, "/dev/null"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    screen = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", proc.stdout)
    assert proc.returncode == 0, screen
    assert re.search(r"publishing \d+/50 files .* MB", screen)


def test_whitelist_sign(tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    storage = tmp_path / "repo"
    assert main(_publish_args(make_full_tree(tmp_path / "src"), storage, keys)) == 0
    capsys.readouterr()
    assert main(["whitelist", "sign", "--keys-dir", str(keys.keys_dir), "--repo", keys.fqrn,
                 "--storage", str(storage), "--days", "3"]) == 0
    assert "valid until" in capsys.readouterr().out
    whitelist, _ = parse_whitelist((storage / ".cvmfswhitelist").read_bytes())
    left = whitelist.expires - datetime.now(UTC)
    assert timedelta(days=2, hours=23) < left <= timedelta(days=3)
    empty = tmp_path / "nokeys"
    empty.mkdir()
    assert main(["whitelist", "sign", "--keys-dir", str(empty), "--repo", keys.fqrn,
                 "--storage", str(storage)]) == 1
    assert "test.pycvmfs.org" in capsys.readouterr().err
