"""The `pycvmfs ingest` command line of the progress tests: a small OCI layout of five
files ingested into a scratch repository (shared by the in-process and the terminal tests)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.oci_layouts import file_member, tar_bytes, write_oci_layout
from tests.publish_helpers import Keys

NAME = "example.org/progress/image:latest"
ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")


def ingest_args(tmp_path: Path, keys: Keys) -> list[str]:
    layout_dir = tmp_path / "oci"
    if not layout_dir.exists():
        files = [file_member(f"f{i}.txt", b"file %d\n" % i * 1000) for i in range(5)]
        write_oci_layout(layout_dir, [tar_bytes(*files)])
    return ["ingest", f"oci:{layout_dir}:latest", "--as", NAME, "--repo", keys.fqrn,
            "--storage", str(tmp_path / "storage"), "--keys-dir", str(keys.keys_dir),
            "--work", str(tmp_path / "work"), "--notify", str(tmp_path / "events.jsonl")]
