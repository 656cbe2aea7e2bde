"""Publisher throughput benchmark: `pycvmfs publish` against `cp -a` of the same tree.

What it measures
    The wall time, input throughput (MB/s and files/s of the source tree) and CPU use
    of publishing a realistic tree (~1 GB in ~20,000 files by default) into a fresh
    local storage, then of republishing it unchanged (every object already exists),
    then (optionally) after 1% of the files were appended to.

Why `cp -a` is the baseline
    Publishing must at least read every file and write every byte once, plus walk and
    stat the tree; `cp -a` does exactly that (data, modes, times) with no hashing or
    compression, on the same disk and page cache, in the same run. The ratio
    "publish seconds / cp seconds" therefore shows how much the publisher adds on top
    of the unavoidable I/O on *this* machine, independent of how fast the disk is.

Fairness
    The source tree is read once before timing, so it is in the page cache for every
    step (cp and publish alike); `sync` runs before each timed step so no step pays
    for the dirty pages of the previous one. Neither timing includes a final sync of
    its own output. CPU seconds are user+sys of the child, from RUSAGE_CHILDREN;
    "others" is the CPU everything else used meanwhile (/proc/stat), so a disturbed
    run shows itself. `--rounds N` repeats the sequence and keeps each step's fastest.
    The "CPU-bound ceiling" (input MB / (CPU s / cores)) is what the first publish
    would reach with every core busy; unlike wall time it hardly depends on other load.

The tree is generated deterministically from `--seed` and cached under `--workdir`
for re-runs; storage, keys and the copy are removed at the end unless `--keep`.
Run from anywhere: `python bench/publish.py [--files 2000 --total-mb 100]`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import system_busy  # noqa: E402

FQRN = "bench.local"
MB = 1_000_000
KIB, MIB = 1024, 1024 * 1024
TARGET_MB_S = 60.0
PIECE_BYTES = 1 << 20  # generation granularity: bounds memory for large files
_ZIPF_TABLE = 1 << 20  # resolution of the word-frequency lookup table

SMALL_MIN, SMALL_MAX = 100, 64 * KIB
MEDIUM_MIN, MEDIUM_MAX = 100 * KIB, 2 * MIB
LARGE_MIN, LARGE_MAX = 10 * MIB, 60 * MIB
BYTE_SHARE = {"large": 0.45, "medium": 0.40}  # the rest goes to small files
TEXT_EXTS = (".txt", ".py", ".h", ".cc", ".json", ".xml", ".cfg", ".md")
BINARY_EXTS = (".bin", ".dat", ".so", ".gz", ".root", ".tar")


# -- tree generation -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TreeSpec:
    files: int
    total_mb: int
    seed: int

    @property
    def name(self) -> str:
        return f"tree-f{self.files}-m{self.total_mb}-s{self.seed}"


@dataclass(frozen=True, slots=True)
class FilePlan:
    index: int
    path: str  # relative to the tree root
    size: int
    size_class: str  # small | medium | large
    kind: str  # text | random


class TextSource:
    """Text-like bytes: Zipf-distributed words from a fixed vocabulary, lines of ~9 words.

    Compresses with zlib roughly like source code or logs (about 3x); vectorised
    with numpy so hundreds of MB take seconds.
    """

    def __init__(self, seed: int, vocabulary: int = 8000) -> None:
        rng = np.random.default_rng([seed, 0x7E47])
        lengths = rng.integers(2, 11, size=vocabulary)
        letters = rng.integers(ord("a"), ord("z") + 1, size=int(lengths.sum()), dtype=np.uint8)
        digits = rng.random(len(letters)) < 0.08
        letters[digits] = rng.integers(ord("0"), ord("9") + 1, size=int(digits.sum()))
        self.lengths = lengths + 1  # each word keeps a trailing separator
        self.starts = np.concatenate(([0], np.cumsum(self.lengths)[:-1]))
        self.blob = np.full(int(self.lengths.sum()), ord(" "), dtype=np.uint8)
        spots = np.repeat(self.starts, lengths) + _ranges(lengths)
        self.blob[spots] = letters
        weights = 1.0 / np.arange(1, vocabulary + 1) ** 1.1
        cdf = np.cumsum(weights) / weights.sum()
        quantiles = (np.arange(_ZIPF_TABLE) + 0.5) / _ZIPF_TABLE
        self.zipf = np.searchsorted(cdf, quantiles).astype(np.int32)  # uniform -> Zipf word

    def word(self, rng: np.random.Generator) -> str:
        i = int(self.zipf[rng.integers(_ZIPF_TABLE)])
        return self.blob[self.starts[i] : self.starts[i] + self.lengths[i] - 1].tobytes().decode()

    def piece(self, rng: np.random.Generator, n: int) -> bytes:
        """`n` bytes of text (every word is at least 3 bytes with its separator)."""
        words = self.zipf[rng.integers(0, _ZIPF_TABLE, size=n // 3 + 1)]
        lengths = self.lengths[words]
        ends = np.cumsum(lengths)
        keep = int(np.searchsorted(ends, n)) + 1
        words, lengths, ends = words[:keep], lengths[:keep], ends[:keep]
        source = np.repeat(self.starts[words], lengths) + _ranges(lengths)
        out = self.blob[source]
        out[ends[rng.random(keep) < 0.11] - 1] = ord("\n")
        return out[:n].tobytes()


def _ranges(lengths: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Concatenated `arange(l)` for every `l` in `lengths`."""
    total = int(lengths.sum())
    firsts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(total) - firsts


def plan_sizes(spec: TreeSpec, rng: np.random.Generator) -> list[tuple[int, str]]:
    """(size, class) for every file: budgets by bytes for large/medium, the rest small."""
    total = spec.total_mb * MB
    n_large = round(BYTE_SHARE["large"] * total / ((LARGE_MIN + LARGE_MAX) / 2))
    n_medium = round(BYTE_SHARE["medium"] * total / ((MEDIUM_MIN + MEDIUM_MAX) / 2))
    n_large = min(n_large, spec.files)
    n_medium = min(n_medium, spec.files - n_large)
    n_small = spec.files - n_large - n_medium
    large = rng.integers(LARGE_MIN, LARGE_MAX, size=n_large)
    medium = rng.integers(MEDIUM_MIN, MEDIUM_MAX, size=n_medium)
    small_budget = max(total - int(large.sum()) - int(medium.sum()), n_small * SMALL_MIN)
    small = rng.lognormal(np.log(3000), 1.0, size=n_small)
    if n_small:
        small *= small_budget / small.sum()
    small = np.clip(small, SMALL_MIN, SMALL_MAX).astype(np.int64)
    sized = [(int(s), "large") for s in large] + [(int(s), "medium") for s in medium]
    sized += [(int(s), "small") for s in small]
    order = rng.permutation(len(sized))
    return [sized[i] for i in order]


def assign_kinds(sized: list[tuple[int, str]]) -> list[str]:
    """Small files are text; medium/large are given out so bytes end up ~50/50."""
    kinds = ["text" if cls == "small" else "" for _, cls in sized]
    text = sum(size for size, cls in sized if cls == "small")
    rand = 0
    for i in sorted(range(len(sized)), key=lambda i: -sized[i][0]):
        if kinds[i]:
            continue
        kinds[i] = "random" if rand <= text else "text"
        text, rand = (text, rand + sized[i][0]) if kinds[i] == "random" else (
            text + sized[i][0], rand)
    return kinds


def plan_dirs(count: int, rng: np.random.Generator, words: TextSource) -> list[str]:
    """A random recursive tree: each directory hangs below an earlier one (or the root)."""
    dirs: list[str] = []
    for i in range(count):
        parent = int(rng.integers(-1, i)) if i else -1
        name = f"{words.word(rng)}{i:03d}"
        dirs.append(name if parent < 0 else f"{dirs[parent]}/{name}")
    return dirs


def plan_tree(spec: TreeSpec, words: TextSource) -> list[FilePlan]:
    rng = np.random.default_rng(spec.seed)
    sized = plan_sizes(spec, rng)
    kinds = assign_kinds(sized)
    dirs = plan_dirs(max(10, spec.files // 60), rng, words)
    plans = []
    for i, ((size, cls), kind) in enumerate(zip(sized, kinds, strict=True)):
        exts = TEXT_EXTS if kind == "text" else BINARY_EXTS
        name = f"{words.word(rng)}_{i:05d}{exts[int(rng.integers(len(exts)))]}"
        directory = dirs[int(rng.integers(len(dirs)))]
        plans.append(FilePlan(i, f"{directory}/{name}", size, cls, kind))
    return plans


def file_pieces(plan: FilePlan, seed: int, words: TextSource) -> Iterator[bytes]:
    """The content of one file, piece by piece; depends only on (seed, index)."""
    rng = np.random.default_rng([seed, plan.index])
    left = plan.size
    while left > 0:
        n = min(left, PIECE_BYTES)
        yield words.piece(rng, n) if plan.kind == "text" else rng.bytes(n)
        left -= n


def write_tree(root: Path, plans: list[FilePlan], seed: int, words: TextSource) -> None:
    for plan in plans:
        path = root / plan.path
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            for piece in file_pieces(plan, seed, words):
                fh.write(piece)


@dataclass(frozen=True, slots=True)
class TreeSummary:
    files: int
    dirs: int
    bytes: int
    text_bytes: int
    classes: dict[str, tuple[int, int]]  # size class -> (files, bytes)
    chunked_files: int  # above the default 4 MiB minimum chunk size

    @classmethod
    def of(cls, plans: list[FilePlan]) -> TreeSummary:
        by_class = {c: [p.size for p in plans if p.size_class == c]
                    for c in ("small", "medium", "large")}
        return cls(
            files=len(plans),
            dirs=len({p.path.rsplit("/", 1)[0] for p in plans}),
            bytes=sum(p.size for p in plans),
            text_bytes=sum(p.size for p in plans if p.kind == "text"),
            classes={c: (len(v), sum(v)) for c, v in by_class.items()},
            chunked_files=sum(1 for p in plans if p.size > 4 * MIB),
        )

    @classmethod
    def load(cls, path: Path) -> TreeSummary:
        raw = json.loads(path.read_text())
        raw["classes"] = {c: (int(n), int(b)) for c, (n, b) in raw["classes"].items()}
        return cls(**raw)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))


def ensure_tree(workdir: Path, spec: TreeSpec) -> tuple[Path, TreeSummary]:
    """The cached tree for `spec` (generated on first use), plus its summary."""
    root = workdir / spec.name
    meta_path = workdir / f"{spec.name}.json"
    restore_modified(workdir, spec)
    if root.is_dir() and meta_path.is_file():
        return root, TreeSummary.load(meta_path)
    words = TextSource(spec.seed)
    plans = plan_tree(spec, words)
    partial = workdir / f"{spec.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    print(f"generating {spec.name} ({spec.files} files, ~{spec.total_mb} MB) ...", flush=True)
    started = time.perf_counter()
    write_tree(partial, plans, spec.seed, words)
    partial.rename(root)
    summary = TreeSummary.of(plans)
    summary.save(meta_path)
    print(f"  generated in {time.perf_counter() - started:.1f} s", flush=True)
    return root, summary


# -- modification of 1% (restored afterwards, so the cache stays valid) --------------


def _dirty_path(workdir: Path, spec: TreeSpec) -> Path:
    return workdir / f"{spec.name}.modified.json"


def modify_files(workdir: Path, spec: TreeSpec, root: Path, fraction: float) -> int:
    """Append a line to `fraction` of the files; return the bytes added."""
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    rng = np.random.default_rng([spec.seed, 0x4D0D])
    count = max(1, round(len(files) * fraction))
    chosen = [files[i] for i in sorted(rng.choice(len(files), count, replace=False))]
    original = {rel: (root / rel).stat().st_size for rel in chosen}
    _dirty_path(workdir, spec).write_text(json.dumps(original))
    added = 0
    for rel in chosen:
        line = f"\n# modified by bench/publish.py at {time.time_ns()}\n".encode()
        with open(root / rel, "ab") as fh:
            fh.write(line)
        added += len(line)
    return added


def restore_modified(workdir: Path, spec: TreeSpec) -> None:
    """Undo `modify_files` (also after an interrupted earlier run)."""
    dirty = _dirty_path(workdir, spec)
    if not dirty.is_file():
        return
    root = workdir / spec.name
    for rel, size in json.loads(dirty.read_text()).items():
        if (root / rel).is_file():
            os.truncate(root / rel, size)
    dirty.unlink()


# -- timed steps ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    seconds: float
    cpu_seconds: float  # user+sys of the child
    other_cpu_seconds: float | None  # CPU used by everything else meanwhile (/proc/stat)
    input_bytes: int
    files: int
    output: str

    @property
    def mb_per_s(self) -> float:
        return self.input_bytes / MB / self.seconds

    @property
    def cpu_use(self) -> float:
        return self.cpu_seconds / self.seconds

    @property
    def other_use(self) -> float | None:
        return None if self.other_cpu_seconds is None else self.other_cpu_seconds / self.seconds


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_timed(name: str, argv: list[str], input_bytes: int, files: int) -> Step:
    """sync, then run `argv` to completion; wall time and CPU of the child and of others."""
    subprocess.run(["sync"], check=True)
    cpu_before, busy_before = _child_cpu(), system_busy()
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - started
    cpu, busy_after = _child_cpu() - cpu_before, system_busy()
    other = None
    if busy_before is not None and busy_after is not None:
        other = max(0.0, busy_after - busy_before - cpu)
    if proc.returncode != 0:
        sys.exit(f"step {name!r} failed ({proc.returncode}): {' '.join(argv)}\n"
                 f"{proc.stdout}{proc.stderr}")
    return Step(name, seconds, cpu, other, input_bytes, files,
                (proc.stdout + proc.stderr).strip())


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def warm_page_cache(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                while fh.read(8 * MIB):
                    pass


_LIBRARY_KEYS = """
import sys
from pycvmfs.publisher.keys import create_keys
create_keys(sys.argv[1], sys.argv[2])
"""

_LIBRARY_PUBLISH = """
import sys
from pathlib import Path
from pycvmfs.format.chunking import DEFAULT_CHUNK_PARAMS
from pycvmfs.publisher.pipeline import Settings
from pycvmfs.publisher.publish import PublishOptions, publish
src, fqrn, storage, keys = sys.argv[1:5]
r = publish(PublishOptions(fqrn=fqrn, source=Path(src), storage=Path(storage),
                           keys_dir=Path(keys), settings=Settings(chunking=DEFAULT_CHUNK_PARAMS)))
print(f"published revision {r.manifest.revision}: {r.files} files, {r.bytes_in / 1e6:.1f} MB "
      f"in {r.seconds:.1f} s; {r.objects_written} new objects "
      f"({r.bytes_written / 1e6:.1f} MB stored)")
"""


def cli_works() -> bool:
    probe = [sys.executable, "-m", "pycvmfs", "publish", "--help"]
    return subprocess.run(probe, cwd=REPO_ROOT, env=child_env(),
                          capture_output=True).returncode == 0


def keys_argv(mode: str, keys_dir: Path) -> list[str]:
    if mode == "cli":
        return [sys.executable, "-m", "pycvmfs", "keys", "create", FQRN,
                "--keys-dir", str(keys_dir)]
    return [sys.executable, "-c", _LIBRARY_KEYS, FQRN, str(keys_dir)]


def publish_argv(mode: str, source: Path, storage: Path, keys_dir: Path,
                 extra: list[str]) -> list[str]:
    if mode == "cli":
        return [sys.executable, "-m", "pycvmfs", "publish", str(source), "--repo", FQRN,
                "--storage", str(storage), "--keys-dir", str(keys_dir), *extra]
    return [sys.executable, "-c", _LIBRARY_PUBLISH, str(source), FQRN, str(storage),
            str(keys_dir)]


# -- the benchmark -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bench:
    """Everything one round needs."""

    spec: TreeSpec
    workdir: Path
    source: Path
    run_dir: Path
    total_bytes: int
    files: int
    publish_cmd: list[str]
    modify_percent: float
    keep: bool


def run_round(bench: Bench) -> list[Step]:
    """cp -a, first publish into empty storage, republish, republish after changes."""
    copy, storage = bench.run_dir / "cp-copy", bench.run_dir / "storage"
    total, files = bench.total_bytes, bench.files
    shutil.rmtree(copy, ignore_errors=True)
    shutil.rmtree(storage, ignore_errors=True)
    warm_page_cache(bench.source)
    steps = [run_timed("cp -a (baseline)", ["cp", "-a", str(bench.source), str(copy)],
                       total, files)]
    if not bench.keep:
        shutil.rmtree(copy)
    steps.append(run_timed("publish (first)", bench.publish_cmd, total, files))
    steps.append(run_timed("republish, nothing changed", bench.publish_cmd, total, files))
    if bench.modify_percent > 0:
        try:
            added = modify_files(bench.workdir, bench.spec, bench.source,
                                 bench.modify_percent / 100)
            warm_page_cache(bench.source)
            name = f"republish, {bench.modify_percent:g}% files changed"
            steps.append(run_timed(name, bench.publish_cmd, total + added, files))
        finally:
            restore_modified(bench.workdir, bench.spec)
    return steps


def run_benchmark(args: argparse.Namespace, source: Path, summary: TreeSummary,
                  mode: str) -> list[list[Step]]:
    """Create keys (untimed), then `args.rounds` rounds; storage is removed unless --keep."""
    run_dir = args.workdir / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    keys_dir = run_dir / "keys"
    subprocess.run(keys_argv(mode, keys_dir), cwd=REPO_ROOT, env=child_env(), check=True,
                   capture_output=True)
    bench = Bench(
        spec=TreeSpec(args.files, args.total_mb, args.seed), workdir=args.workdir,
        source=source, run_dir=run_dir, total_bytes=summary.bytes, files=summary.files,
        publish_cmd=publish_argv(mode, source, run_dir / "storage", keys_dir,
                                 shlex.split(args.publish_args)),
        modify_percent=args.modify_percent, keep=args.keep,
    )
    try:
        return [run_round(bench) for _ in range(args.rounds)]
    finally:
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)


def print_tree(source: Path, summary: TreeSummary) -> None:
    total, text = summary.bytes, summary.text_bytes
    print(f"source tree: {source}")
    print(f"  {summary.files} files in {summary.dirs} directories, {total / MB:.1f} MB "
          f"({100 * text / total:.0f}% text-like, {100 - 100 * text / total:.0f}% random bytes); "
          f"{summary.chunked_files} files above the 4 MiB minimum chunk size")
    for name, (count, nbytes) in summary.classes.items():
        print(f"  {name:>6}: {count:6d} files, {nbytes / MB:8.1f} MB")


def print_table(steps: list[Step]) -> None:
    baseline = steps[0].seconds
    header = (f"{'step':<30} {'seconds':>8} {'MB/s in':>8} {'files/s':>8} {'x cp -a':>8} "
              f"{'CPU s':>7} {'CPU use':>8} {'others':>7}")
    print(header)
    print("-" * len(header))
    for s in steps:
        others = "?" if s.other_use is None else f"{s.other_use:.2f}c"
        print(f"{s.name:<30} {s.seconds:8.2f} {s.mb_per_s:8.1f} {s.files / s.seconds:8.0f} "
              f"{s.seconds / baseline:8.2f} {s.cpu_seconds:7.2f} {s.cpu_use:7.2f}c {others:>7}")
    print(f"(CPU use = user+sys CPU seconds of the child / wall seconds; others = CPU busy "
          f"outside the child meanwhile, from /proc/stat; {os.cpu_count()} cores here)")


def print_results(rounds: list[list[Step]], mode: str) -> None:
    via = "the CLI (python -m pycvmfs)" if mode == "cli" else "the library (python -c)"
    print(f"\npublisher invoked via {via}; the source tree is in the page cache for every "
          "step (read once before timing); sync runs before each timed step")
    best = [min(column, key=lambda s: s.seconds) for column in zip(*rounds, strict=True)]
    if len(rounds) > 1:
        print(f"fastest of {len(rounds)} rounds per step:")
    print_table(best)
    if len(rounds) > 1:
        for column in zip(*rounds, strict=True):
            print(f"  {column[0].name:<30} rounds: "
                  + ", ".join(f"{s.seconds:.2f} s" for s in column))
    for s in best[1:]:
        for line in s.output.splitlines():
            print(f"  [{s.name}] {line}")
    busy = [s.name for s in best if s.other_use is not None and s.other_use > 0.2]
    if busy:
        print(f"warning: other processes used CPU during: {', '.join(busy)} -- wall times "
              "are disturbed; re-run on a quiet machine (more --rounds help)")
    first = best[1]
    cores = os.cpu_count() or 1
    ceiling = first.input_bytes / MB / (first.cpu_seconds / cores)
    print(f"CPU-bound ceiling of the first publish: {ceiling:.1f} MB/s (input MB / (CPU s / "
          f"{cores} cores), i.e. if it kept every core busy; insensitive to other load)")
    verdict = "PASS" if first.mb_per_s >= TARGET_MB_S else "FAIL"
    print(f"\ntarget: >= {TARGET_MB_S:.0f} MB/s of input on 2 cores: first publish "
          f"{first.mb_per_s:.1f} MB/s -> {verdict}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/pycvmfs-bench"),
                        help="cache for the source tree; storage and copies go below it")
    parser.add_argument("--files", type=int, default=20_000, help="number of files")
    parser.add_argument("--total-mb", type=int, default=1000, help="approximate total size")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated tree")
    parser.add_argument("--modify-percent", type=float, default=1.0,
                        help="percent of files to change for the third step (0 skips it)")
    parser.add_argument("--mode", choices=("auto", "cli", "library"), default="auto",
                        help="run `python -m pycvmfs` or the library via `python -c`")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the whole sequence; the table shows each step's fastest")
    parser.add_argument("--publish-args", default="", metavar="ARGS",
                        help='extra options for `pycvmfs publish`, e.g. "--compression none"')
    parser.add_argument("--keep", action="store_true",
                        help="keep storage, keys and the cp copy (under WORKDIR/run)")
    args = parser.parse_args(argv)
    if args.files < 1 or args.total_mb < 1 or args.rounds < 1:
        parser.error("--files, --total-mb and --rounds must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.workdir = args.workdir.absolute()
    args.workdir.mkdir(parents=True, exist_ok=True)
    mode = args.mode
    if mode == "auto":
        mode = "cli" if cli_works() else "library"
        if mode == "library":
            print("note: `python -m pycvmfs` does not start; calling the library instead")
    source, summary = ensure_tree(args.workdir, TreeSpec(args.files, args.total_mb, args.seed))
    if args.publish_args and mode != "cli":
        sys.exit("--publish-args needs the CLI (--mode cli)")
    print_tree(source, summary)
    print_results(run_benchmark(args, source, summary, mode), mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
