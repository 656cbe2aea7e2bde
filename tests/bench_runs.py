"""Run a benchmark script's `--quick` mode as the smoke tests do: the script must exit 0 and
print its table, whose header names the ratio column and the targets."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class BenchRun:
    stdout: str
    table: str  # from the header line `measurement ...` on
    seconds: float


def run_bench(script: str, args: list[str], *, ratio_column: str, timeout: float) -> BenchRun:
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--quick", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("measurement"))
    assert ratio_column in lines[header] and "target" in lines[header]
    return BenchRun(done.stdout, "\n".join(lines[header:]), seconds)
