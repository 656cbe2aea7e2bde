"""Rows of `bench/client.py`: timing a measurement (wall seconds, CPU of the mount process
and of everything else), and printing the table and the pycvmfs/cvmfs2 block."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from bench.common import MB, own_cpu, process_cpu, system_busy

# units whose rows carry a value (`amount`) instead of a duration, and how it is shown
VALUES = {"MB": "{:.1f} MB", "MB fetched": "{:.2f} MB", "count": "{:.0f}",
          "CPU s": "{:.2f} CPU s", "%": "{:.2f} %"}


@dataclass(slots=True)
class Row:
    name: str
    seconds: float
    amount: float  # entries, or bytes
    unit: str  # "entries" | "bytes" | "op" (rate not shown) | a value unit (VALUES)
    baseline: str | None = None  # name of the local row it is compared with
    ratio: float | None = None  # seconds / baseline seconds
    target: str = ""
    passed: bool | None = None
    mount_cpu: float | None = None  # cores (CPU s / wall s) of the mount process
    others: float | None = None  # cores used by everything else
    note: str = ""

    @property
    def rate(self) -> str:
        if self.unit in VALUES:
            return VALUES[self.unit].format(self.amount)
        if self.seconds <= 0 or self.unit == "op":
            return "-"
        if self.unit == "entries":
            return f"{self.amount / self.seconds:,.0f} ent/s"
        return f"{self.amount / MB / self.seconds:,.1f} MB/s"


@dataclass(slots=True)
class Results:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reference: set[str] = field(default_factory=set)  # names of the cvmfs2 rows
    reference_version: str = ""
    pairs: list[tuple[Row, Row]] = field(default_factory=list)  # (pycvmfs, cvmfs2) rows

    def get(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    def find(self, name: str) -> Row | None:
        return next((r for r in self.rows if r.name == name), None)

    def add(self, row: Row) -> Row:
        if row.baseline is not None:
            base = self.get(row.baseline)
            if row.unit not in VALUES and base.seconds > 0:
                row.ratio = (row.seconds / base.seconds) * (base.amount / row.amount
                                                            if row.amount else 1.0)
        self.rows.append(row)
        print(f"  {row.name}: "
              + (f"{row.seconds:.2f} s, " if row.unit not in VALUES else "") + row.rate
              + (f", {row.ratio:.2f}x local" if row.ratio is not None else "")
              + (f" [{row.note}]" if row.note else ""), flush=True)
        return row


@contextmanager
def timed(pid: int | None = None) -> Iterator[dict[str, float | None]]:
    """Wall seconds, CPU cores of `pid` and of everything else (minus this process)."""
    out: dict[str, float | None] = {}
    cpu0 = process_cpu(pid) if pid else None
    busy0, own0 = system_busy(), own_cpu()
    t0 = time.perf_counter()
    yield out
    seconds = time.perf_counter() - t0
    cpu1 = process_cpu(pid) if pid else None
    busy1, own1 = system_busy(), own_cpu()
    mount_cpu = (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None
    out["seconds"] = seconds
    out["mount_cpu"] = mount_cpu / seconds if mount_cpu is not None else None
    if busy0 is not None and busy1 is not None:
        others = busy1 - busy0 - (own1 - own0) - (mount_cpu or 0.0)
        out["others"] = max(0.0, others) / seconds
    else:
        out["others"] = None


def measure(results: Results, name: str, work: Callable[[], float], unit: str, *,
            pid: int | None = None, baseline: str | None = None, target: str = "",
            check: Callable[[Row], bool] | None = None, note: str = "", rounds: int = 1,
            before: Callable[[], object] | None = None) -> Row:
    """Time `work` (`before` runs untimed ahead of each round); the fastest of `rounds`."""
    best: tuple[dict[str, float | None], float] | None = None
    for _ in range(rounds):
        if before is not None:
            before()
        with timed(pid) as t:
            amount = work()
        if best is None or (t["seconds"] or 0.0) < (best[0]["seconds"] or 0.0):
            best = (t, amount)
    assert best is not None
    t, amount = best
    seconds = t["seconds"] or 0.0
    if rounds > 1:
        note = ", ".join(filter(None, [note, f"fastest of {rounds}"]))
    row = Row(name, seconds, amount, unit, baseline=baseline, target=target,
              mount_cpu=t["mount_cpu"], others=t["others"], note=note)
    results.add(row)
    if check is not None:
        row.passed = check(row)
    return row



def print_table(results: Results) -> None:
    header = (f"{'measurement':<48} {'seconds':>8} {'rate':>16} {'x local':>8} "
              f"{'mnt CPU':>8} {'others':>7} {'target':>18} {'result':>6}")
    print()
    print(header)
    print("-" * len(header))
    for r in results.rows:
        seconds = f"{r.seconds:8.2f}" if r.unit not in VALUES else f"{'':>8}"
        ratio = f"{r.ratio:7.2f}x" if r.ratio is not None else f"{'':>8}"
        short = r.seconds < 0.1  # a few clock ticks: CPU shares would be noise
        cpu = f"{r.mount_cpu:7.2f}c" if r.mount_cpu is not None and not short else f"{'':>8}"
        others = f"{r.others:6.2f}c" if r.others is not None and not short else f"{'':>7}"
        verdict = "" if r.passed is None else ("PASS" if r.passed else "FAIL")
        print(f"{r.name:<48} {seconds} {r.rate:>16} {ratio} {cpu} {others} "
              f"{r.target:>18} {verdict:>6}")
    print("(x local = seconds / seconds of the same work on local disk; mnt CPU = CPU cores "
          "the mount process used; others = cores used by all other processes -- nginx, other "
          f"users -- this script and the commands it waits for excluded; {os.cpu_count()} "
          "cores here)")
    for note in results.notes:
        print(f"note: {note}")
    busy = [r.name for r in results.rows if r.others is not None and r.others > 0.5
            and r.seconds > 0.5]
    if busy:
        print(f"warning: much CPU used outside the mount process during: {', '.join(busy)}")
    judged = [r for r in results.rows if r.passed is not None]
    failed = [r.name for r in judged if not r.passed]
    print(f"\n{len(judged) - len(failed)} of {len(judged)} targets met"
          + (f"; FAIL: {', '.join(failed)}" if failed else ""))
    if results.pairs:
        print_pairs(results)


def x_reference(mine: Row, ref: Row) -> float | None:
    """pycvmfs seconds / cvmfs2 seconds for the same work (per entry or byte, should the
    amounts differ); for value rows (memory, bytes fetched, CPU seconds) value / value."""
    if mine.unit in VALUES:
        return mine.amount / ref.amount if ref.amount > 0 else None
    if mine.unit == "op" or not (mine.amount and ref.amount):
        return mine.seconds / ref.seconds if ref.seconds > 0 else None
    per_ref = ref.seconds / ref.amount
    return (mine.seconds / mine.amount) / per_ref if per_ref > 0 else None


def print_pairs(results: Results) -> None:
    header = (f"{'pycvmfs measurement (cvmfs2: same work)':<48} {'pycvmfs':>8} {'rate':>16} "
              f"{'cvmfs2':>8} {'rate':>16} {'x cvmfs2':>9}")
    print(f"\npycvmfs vs the reference client cvmfs2 {results.reference_version}".rstrip())
    print(header)
    print("-" * len(header))
    for mine, ref in results.pairs:
        if mine.unit in VALUES:
            a, b = f"{'':>8}", f"{'':>8}"
        else:
            a, b = f"{mine.seconds:8.2f}", f"{ref.seconds:8.2f}"
        x = x_reference(mine, ref)
        ratio = f"{x:8.2f}x" if x is not None else f"{'':>9}"
        print(f"{mine.name:<48} {a} {mine.rate:>16} {b} {ref.rate:>16} {ratio}")
    print("(x cvmfs2 = pycvmfs seconds / cvmfs2 seconds for the same work, both against the "
          "same nginx and local rows; value rows -- MB, CPU s, %, count: pycvmfs / cvmfs2)")



@dataclass(frozen=True, slots=True)
class Sample:
    """One round of a measurement repeated over rounds (`median_row` keeps the median)."""

    seconds: float
    amount: float
    mount_cpu: float | None = None  # cores of the mount process
    others: float | None = None  # cores of everything else

    @property
    def cpu_seconds(self) -> float:
        return (self.mount_cpu or 0.0) * self.seconds


def sample(work: Callable[[], float], pid: int | None = None) -> Sample:
    """Time `work` once (its return value is the amount)."""
    with timed(pid) as t:
        amount = work()
    return Sample(t["seconds"] or 0.0, amount, t["mount_cpu"], t["others"])


def median_row(results: Results, name: str, samples: list[Sample], unit: str, *,
               baseline: str | None = None, note: str = "") -> Row:
    """The row of the median round: by seconds, or by amount for a value unit (the lower
    middle one for an even count, so every column comes from one real round)."""
    if not samples:
        raise ValueError(f"{name}: no samples")
    value = unit in VALUES
    ordered = sorted(samples, key=lambda s: s.amount if value else s.seconds)
    mid = ordered[(len(ordered) - 1) // 2]
    spread = ([s.amount for s in ordered] if value else [s.seconds for s in ordered])
    if len(samples) > 1:
        low, high = spread[0], spread[-1]
        note = ", ".join(filter(None, [note, f"median of {len(samples)}: {low:.3g}-{high:.3g}"]))
    return results.add(Row(name, 0.0 if value else mid.seconds, mid.amount, unit,
                           baseline=baseline, mount_cpu=mid.mount_cpu, others=mid.others,
                           note=note))
