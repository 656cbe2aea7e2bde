"""The ingest progress display seen from outside: a fresh interpreter without a terminal
never imports rich, and `pycvmfs ingest` under script(1) draws the publish line."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ingest_args import ANSI, ingest_args
from tests.publish_helpers import Keys

REPO_ROOT = Path(__file__).resolve().parents[2]




def test_rich_is_not_imported_without_a_terminal() -> None:
    code = ("import sys\n"
            "import pycvmfs.cli.main\n"
            "from pycvmfs.cli.progress import IngestProgressDisplay\n"
            "with IngestProgressDisplay() as d:\n"
            "    d.start_image('a', 1, 1); d.unpacked(1, 1); d.begin(1, 1); d.advance(1, 1)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'rich'))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60, check=True)
    assert proc.stdout.strip() == "[]"
    assert proc.stderr == ""


@pytest.mark.skipif(shutil.which("script") is None, reason="needs script(1) for a terminal")
def test_ingest_on_a_terminal(tmp_path: Path, keys: Keys) -> None:
    command = " ".join([sys.executable, "-m", "pycvmfs", *ingest_args(tmp_path, keys)])
    proc = subprocess.run(["script", "-qec", command, "/dev/null"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    screen = ANSI.sub("", proc.stdout)
    assert proc.returncode == 0, screen
    assert re.search(r"publishing \d+/\d+ files", screen), screen
    assert "published test.pycvmfs.org revision 1" in screen
