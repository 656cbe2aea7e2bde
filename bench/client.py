"""Client benchmark: a `pycvmfs mount` against the same tree on local disk, in one run.

What it measures
    Metadata: `os.walk` + `lstat` of every entry of a ~20,000-entry tree (directories,
    small files, symlinks, a few nested catalogs) -- on local disk, through a fresh mount
    whose cache already holds the catalogs ("cold": every lookup reaches the client), and
    a second time in the same mount ("warm": the kernel already holds every dentry).
    Data: a sequential read (1 MiB reads) of one chunked file of random bytes (1 GB by
    default), from local disk, through a mount with an empty cache (every chunk comes from
    nginx on loopback) and through a fresh mount on the filled cache; and 8 readers in
    parallel (threads), each reading its own file. Memory: VmRSS/VmHWM of the mount
    process after walking 100,000 distinct entries in a fresh mount.
    Container image ("img", "start" rows; `--no-image` skips them, `--image-only` keeps
    only them): a Debian + python3 image ingested into a repository of its own -- 8 readers
    over all its regular files (empty cache, cache filled) with the client's CPU seconds,
    `ls -lR` (fresh mount, repeat) and of the tree's many/, mount time (empty cache, cache
    filled), VmRSS after the listing, container start (bwrap + python3 with imports; cache
    filled, empty cache, and empty cache on a repository ingested with a start set), bytes
    fetched (% of the image) and objects fetched twice during each cold measurement.
    These rows are the median of `--rounds` (5) rounds interleaved between local disk,
    pycvmfs and cvmfs2; bench/client_image.py says exactly what each round does.

Why local disk is the baseline
    The tree the repository was published from sits on the same disk; walking and reading
    it in the same run shows what the FUSE client adds on *this* machine, whatever the disk
    and the load. Cold is compared with cold, warm with warm: the cold walks (local and
    mount) run right after `echo 3 > /proc/sys/vm/drop_caches` (root), the warm ones repeat
    them. Read ratios are against local reads with the page cache dropped; the warm mount
    read drops it too, so both read the bytes from disk. "x local" is always seconds / local
    seconds for the same work. Each local baseline is the fastest of `--local-rounds` (3)
    runs, so a disturbance on this shared machine makes the baseline no slower.

Fairness and caveats
    The repository storage is read once before the cold reads, so nginx serves from the
    page cache and the cold numbers show the client, not the disk. "Cold" metadata means a
    fresh mount (empty kernel caches, page cache dropped) with the catalogs already in the
    client cache on disk. "mnt CPU" is user+sys of the mount process per wall second
    (cores); "others" is the CPU all other processes used meanwhile (nginx, other users;
    this script and the commands it waits for excluded): a high value marks a disturbed
    measurement. The
    timed code shares this machine's cores with the mount process. The kernel's read
    requests to FUSE are 128 KiB unless `--read-ahead-kb 1024` raises the mount's bdi
    read-ahead (machine notes: then 1 MiB). Rows marked "(info)" and rows without a target
    are context, not goals.

The reference client (`--reference-cvmfs2 PATH`, or $PYCVMFS_REFERENCE_CVMFS2)
    The same three mounts and measurements (one function measures a mount, whichever client
    made it) are repeated with CernVM-FS's own `cvmfs2`, on the same repository from the
    same nginx, with its own cache, socket dir and mount point in the run's scratch dir
    (config: CVMFS_SHARED_CACHE=no, CVMFS_QUOTA_LIMIT=-1, CVMFS_USER=root; the process
    measured is the `user.pid` xattr of its mount root). Its rows ("walk cvmfs2, warm
    (same mount)", ...) carry no targets; a final block lists "x cvmfs2" = pycvmfs seconds /
    cvmfs2 seconds for each paired measurement (value rows -- memory, CPU seconds, bytes
    fetched, objects fetched twice: value / value). In --json they are under
    "reference_cvmfs2". Its mounts are unmounted with `fusermount3 -u` (then `-u -z`).

The tree, the keys and the published repository are cached under `--workdir` (keyed by
the sizes and seed; the image repositories by the image) so re-runs skip the setup; the
client cache and mount point are made fresh every run. Run from the repository root:
`python bench/client.py [--quick]`. Needs root (drop_caches, FUSE mounts), /dev/fuse and
nginx; the image rows also bwrap and the test images of tests/images.py (built once).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.client_image import ImageOptions, bench_image  # noqa: E402
from bench.client_mounts import (  # noqa: E402
    ClientMount,
    Cvmfs2Mount,
    Env,
    Mount,
    Reference,
    unmount_below,
)
from bench.client_results import Results, Row, measure, print_table, x_reference  # noqa: E402
from bench.client_tree import FQRN, Spec, ensure_repository  # noqa: E402
from bench.common import (  # noqa: E402
    MB,
    MIB,
    AccessLog,
    compile_package,
    drop_caches,
    journaled_scratch,
    read_file,
    warm_files,
)

READ_BLOCK = MIB
PARALLEL_READERS = 8
SCRATCH_BYTES = 16 << 30  # sparse: both clients' caches of the tree and the image fit

TARGET_WARM_WALK_X = 2.0  # warm walk seconds <= 2x the warm local walk
TARGET_COLD_WALK_X = 5.0  # cold walk seconds <= 5x the cold local walk
TARGET_COLD_READ_MB_S = 200.0
TARGET_WARM_READ_SHARE = 0.5  # warm read MB/s >= 50 % of local disk
TARGET_RSS_MB = 150.0


# -- system probes -------------------------------------------------------------------


def _default_backend() -> str:
    """The binding `pycvmfs mount` would pick (for the table's notes)."""
    from pycvmfs.fs.mount import load_backend

    return load_backend()[0]


# -- workloads -----------------------------------------------------------------------


def walk(root: Path) -> int:
    """os.walk + lstat of every entry below `root`; the number of entries."""
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lstat(os.path.join(dirpath, name))
            count += 1
    return count


def read_parallel(paths: list[Path]) -> int:
    with ThreadPoolExecutor(max_workers=len(paths)) as pool:
        return sum(pool.map(read_file, paths))


def same_samples(a: Path, b: Path, size: int) -> bool:
    """Compare 1 MiB at the start, middle and end of two files (cheap correctness check)."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for offset in sorted({0, max(0, size // 2 - READ_BLOCK // 2),
                              max(0, size - READ_BLOCK)}):
            fa.seek(offset)
            fb.seek(offset)
            if fa.read(READ_BLOCK) != fb.read(READ_BLOCK):
                return False
    return True


# -- the benchmark -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Client:
    """One FUSE client as `bench_mounts` sees it; row names come from templates in which
    {m} is the client ("mount" for pycvmfs, keeping the historic names), {M} its mount
    ("mount" / "cvmfs2 mount") and {P} a prefix ("" / "cvmfs2 ")."""

    mnt: Path
    cache: Path
    mount: Callable[[], ClientMount]
    command: str  # what the mount seconds time
    m: str = "mount"
    M: str = "mount"
    P: str = ""
    judged: bool = True  # targets apply (pycvmfs only)

    def label(self, template: str, **kw: Any) -> str:
        return template.format(m=self.m, M=self.M, P=self.P, **kw)


@dataclass(frozen=True, slots=True)
class Work:
    """What both clients are measured on, and the local rows they are compared with."""

    src: Path
    storage: Path
    spec: Spec
    drop: bool
    big: Path
    par: list[Path]
    dropped: str
    local_cold: str
    local_walk: str
    local_read: str
    local_par: str
    rounds: int  # repeatable rows (warm reads) take the fastest of this many, like local


def run(env: Env, spec: Spec, results: Results, drop: bool, local_rounds: int,
        reference: Reference | None = None) -> None:
    src = env.base / "src"
    big = Path("data/big.bin")
    par = [Path(f"data/par/p{i}.bin") for i in range(spec.par_files)]
    dropped = "page cache dropped" if drop else "page cache NOT dropped"

    def drop_now() -> None:
        drop_caches(drop)

    print(f"local disk (fastest of {local_rounds} rounds each):", flush=True)
    rounds = local_rounds
    local_cold = f"walk local, cold ({'caches dropped' if drop else 'NOT dropped'})"
    measure(results, local_cold, lambda: walk(src / "tree"), "entries", rounds=rounds,
            before=drop_now)
    measure(results, "walk local, warm", lambda: walk(src / "tree"), "entries", rounds=rounds)
    measure(results, f"seq read local ({dropped})", lambda: read_file(src / big), "bytes",
            rounds=rounds, before=drop_now)
    measure(results, "seq read local, page cache hot", lambda: read_file(src / big), "bytes",
            rounds=rounds)
    measure(results, f"{len(par)} readers local ({dropped})",
            lambda: read_parallel([src / p for p in par]), "bytes", rounds=rounds,
            before=drop_now)
    work = Work(src=src, storage=env.base / "storage", spec=spec, drop=drop, big=big, par=par,
                dropped=dropped, local_cold=local_cold, local_walk="walk local, warm",
                local_read=f"seq read local ({dropped})",
                local_par=f"{len(par)} readers local ({dropped})", rounds=local_rounds)

    pycvmfs_rows = bench_mounts(results, work, Client(
        mnt=env.mnt, cache=env.cache, mount=lambda: Mount(env),
        command="pycvmfs mount command until mounted"))
    if reference is None:
        return
    reference.write_config(env)
    cvmfs2_rows = bench_mounts(results, work, Client(
        mnt=reference.mnt, cache=reference.cache,
        mount=lambda: Cvmfs2Mount(reference, env.read_ahead_kb),
        command="cvmfs2 command until mounted", m="cvmfs2", M="cvmfs2 mount", P="cvmfs2 ",
        judged=False))
    results.reference = {row.name for row in cvmfs2_rows.values()}
    results.reference_version = reference.version
    results.pairs = [(row, cvmfs2_rows[key]) for key, row in pycvmfs_rows.items()
                     if key in cvmfs2_rows]


def bench_mounts(results: Results, work: Work, client: Client) -> dict[str, Row]:
    """Three fresh mounts of `client`: empty cache, filled cache, filled cache in the page
    cache. The rows it adds, keyed by their name template (the same for every client)."""
    spec, src, big, par, drop, dropped = (work.spec, work.src, work.big, work.par, work.drop,
                                          work.dropped)
    mnt = client.mnt
    rows: dict[str, Row] = {}

    def keep(template: str, row: Row) -> Row:
        rows[template] = row
        return row

    def add(template: str, seconds: float, amount: float, unit: str, *, target: str = "",
            note: str = "", **kw: Any) -> Row:
        row = results.add(Row(client.label(template, **kw), seconds, amount, unit,
                              target=target if client.judged else "", note=note))
        return keep(template, row)

    def timed_row(template: str, fn: Callable[[], float], unit: str, m: ClientMount,
                  baseline: str, *, target: str = "", check: Callable[[Row], bool] | None = None,
                  entries: int | None = None, rounds: int = 1,
                  before: Callable[[], object] | None = None, **kw: Any) -> Row:
        """`measure` for this client: targets only if judged; a wrong entry count of an
        unjudged client becomes a note (`entries`: the expected count)."""
        row = measure(results, client.label(template, **kw), fn, unit, pid=m.pid,
                      baseline=baseline, target=target if client.judged else "",
                      check=check if client.judged else None, rounds=rounds, before=before)
        if not client.judged and entries is not None and row.amount != entries:
            results.notes.append(f"warning: {row.name} saw {row.amount:,.0f} entries, local "
                                 f"{entries:,}")
        return keep(template, row)

    def entries_match(local: str) -> Callable[[Row], bool]:
        def check(row: Row) -> bool:
            return row.amount == results.get(local).amount
        return check

    local_entries = int(results.get(work.local_walk).amount)
    warm_files(work.storage / "data")  # nginx serves from the page cache
    shutil.rmtree(client.cache, ignore_errors=True)
    print(client.label("{M} 1, empty cache (everything from nginx):"), flush=True)
    with client.mount() as m:
        add("{M}, empty cache (trust chain + root catalog)", m.seconds, 1, "op",
            note=client.command)
        if m.read_ahead_kb is not None:
            results.notes.append(client.label(f"{{M}} bdi read_ahead_kb: {m.read_ahead_kb}"))
        timed_row("seq read {m}, cold (empty cache)", lambda: read_file(mnt / big), "bytes", m,
                  work.local_read, target=f">= {TARGET_COLD_READ_MB_S:.0f} MB/s",
                  check=lambda r: r.amount / MB / r.seconds >= TARGET_COLD_READ_MB_S)
        if not same_samples(src / big, mnt / big, spec.big_bytes):
            raise RuntimeError(client.label("the {m} returned different bytes than the local "
                                            "file"))
        timed_row("{n} readers {m}, cold", lambda: read_parallel([mnt / p for p in par]),
                  "bytes", m, work.local_par, n=len(par))
        timed_row("walk {m}, empty cache (catalog downloads)", lambda: walk(mnt / "tree"),
                  "entries", m, work.local_cold, check=entries_match(work.local_walk),
                  target="same entries", entries=local_entries)

    print(client.label("{M} 2, catalogs and data cached:"), flush=True)
    with client.mount() as m:
        add("{M}, cache filled", m.seconds, 1, "op", note=client.command)
        drop_caches(drop)  # like the local cold walk: catalogs come from the disk cache
        cold = timed_row("walk {m}, cold (catalogs cached)", lambda: walk(mnt / "tree"),
                         "entries", m, work.local_cold,
                         target=f"<= {TARGET_COLD_WALK_X:g}x local cold",
                         check=lambda r: r.ratio is not None and r.ratio <= TARGET_COLD_WALK_X
                         and r.amount == results.get(work.local_walk).amount,
                         entries=local_entries)
        results.notes.append(client.label("cold {P}mount walk / warm local walk: ")
                             + f"{cold.seconds / results.get(work.local_walk).seconds:.1f}x")
        timed_row("walk {m}, warm (same mount)", lambda: walk(mnt / "tree"), "entries", m,
                  work.local_walk, target=f"<= {TARGET_WARM_WALK_X:g}x local warm",
                  check=lambda r: r.ratio is not None and r.ratio <= TARGET_WARM_WALK_X
                  and r.amount == results.get(work.local_walk).amount, entries=local_entries)
        # repeatable, so measured like the local rows they are compared with: the fastest
        # of the same number of rounds, the page cache dropped before each
        timed_row("seq read {m}, warm ({dropped})", lambda: read_file(mnt / big), "bytes", m,
                  work.local_read, target=f">= {TARGET_WARM_READ_SHARE:.0%} local MB/s",
                  check=lambda r: r.ratio is not None and 1 / r.ratio >= TARGET_WARM_READ_SHARE,
                  dropped=dropped, rounds=work.rounds, before=lambda: drop_caches(drop))
        timed_row("{n} readers {m}, warm ({dropped})",
                  lambda: read_parallel([mnt / p for p in par]), "bytes", m, work.local_par,
                  n=len(par), dropped=dropped, rounds=work.rounds,
                  before=lambda: drop_caches(drop))
        rss, hwm = m.memory_mb()
        add("{M} 2 VmRSS at the end (info)", 0.0, rss, "MB", note=f"VmHWM {hwm:.1f} MB")

    print(client.label("{M} 3, cache filled, cache files in the page cache:"), flush=True)
    with client.mount() as m:
        rss0, _ = m.memory_mb()
        add("{M} 3 VmRSS after mounting", 0.0, rss0, "MB")
        if spec.many:
            local_name = "walk local many/ (info, page cache warm)"
            local_many = (results.find(local_name)
                          or measure(results, local_name, lambda: walk(src / "many"), "entries"))
            timed_row("walk {m} many/, {n:,} new entries", lambda: walk(mnt / "many"),
                      "entries", m, local_many.name, target="same entries",
                      check=lambda r: r.amount == local_many.amount,
                      entries=int(local_many.amount), n=spec.many)
            rss, hwm = m.memory_mb()
            total = results.rows[-1].amount
            row = add("{P}VmRSS after walking {total:,.0f} entries", 0.0, rss, "MB",
                      target=f"<= {TARGET_RSS_MB:.0f} MB", total=total)
            if client.judged:
                row.passed = rss <= TARGET_RSS_MB
            row = add("{P}VmHWM after walking {total:,.0f} entries", 0.0, hwm, "MB",
                      target=f"<= {TARGET_RSS_MB:.0f} MB", total=total)
            if client.judged:
                row.passed = hwm <= TARGET_RSS_MB
        warm_files(client.cache)  # the cache files in the page cache, as the local hot read
        timed_row("seq read {m}, warm, page cache hot", lambda: read_file(mnt / big), "bytes",
                  m, "seq read local, page cache hot")
        rss, hwm = m.memory_mb()
        add("{M} 3 VmRSS after reading too (info)", 0.0, rss, "MB", note=f"VmHWM {hwm:.1f} MB")
    return rows

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/pycvmfs-bench-client"),
                        help="cache of generated trees and repositories; run scratch below it")
    parser.add_argument("--entries", type=int, default=None,
                        help="entries of the walked tree (default 20000)")
    parser.add_argument("--size-gb", type=float, default=None,
                        help="size of the sequentially read file (default 1.0)")
    parser.add_argument("--parallel-mb", type=float, default=None,
                        help=f"size of each of the {PARALLEL_READERS} parallel files "
                             "(default 64)")
    parser.add_argument("--rss-entries", type=int, default=None,
                        help="distinct entries walked before reading RSS (default 100000; "
                             "0 skips)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--chunk-sizes", default=None, metavar="MIN,AVG,MAX",
                        help="passed to `pycvmfs publish` (default: its 4M,8M,16M)")
    parser.add_argument("--backend", default=None,
                        help="FUSE binding: lowlevel, pyfuse3 or mfusepy (default: as "
                        "pycvmfs picks)")
    parser.add_argument("--read-ahead-kb", type=int, default=None,
                        help="set the mount's bdi read_ahead_kb after mounting (default: "
                             "leave the kernel's value)")
    parser.add_argument("--local-rounds", type=int, default=None,
                        help="repeat each local-disk baseline and keep the fastest (default 3; "
                             "1 with --quick): a shared machine disturbs single runs")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of the image rows, interleaved between the clients; the "
                             "median is shown (default 5; 1 with --quick)")
    parser.add_argument("--no-image", action="store_true",
                        help="skip the image rows (readers over many small files, ls -lR, "
                             "mount time, container start)")
    parser.add_argument("--image-only", action="store_true",
                        help="only the image rows (the tree is still set up: many/ is listed)")
    parser.add_argument("--no-drop-caches", action="store_true",
                        help="never write /proc/sys/vm/drop_caches (implied by --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes for a smoke run (timings meaningless)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="also write the results as JSON")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--reference-cvmfs2", type=Path, metavar="PATH",
                        default=Path(os.environ["PYCVMFS_REFERENCE_CVMFS2"])
                        if os.environ.get("PYCVMFS_REFERENCE_CVMFS2") else None,
                        help="also measure the reference client: mount the same repository "
                             "from the same nginx with this cvmfs2 binary (a build directory "
                             "with libcvmfs_fuse3_stub.so next to it works) and compare "
                             "(default: $PYCVMFS_REFERENCE_CVMFS2 if set, else off)")
    args = parser.parse_args(argv)
    quick = {"entries": 300, "size_gb": 0.024, "parallel_mb": 1.0, "rss_entries": 1000,
             "local_rounds": 1, "rounds": 1}
    full = {"entries": 20_000, "size_gb": 1.0, "parallel_mb": 64.0, "rss_entries": 100_000,
            "local_rounds": 3, "rounds": 5}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.quick:
        args.no_drop_caches = True
    if (args.entries < 20 or args.size_gb <= 0 or args.parallel_mb <= 0
            or args.rss_entries < 0 or args.local_rounds < 1 or args.rounds < 1):
        parser.error("sizes and rounds must be positive (--entries at least 20)")
    if args.no_image and args.image_only:
        parser.error("--no-image and --image-only exclude each other: choose one")
    ref = args.reference_cvmfs2
    if ref is not None:
        args.reference_cvmfs2 = ref = ref.absolute()
        if not (ref.is_file() and os.access(ref, os.X_OK)):
            parser.error(f"--reference-cvmfs2: {ref} is not an executable file")
    return args


def preflight(reference: bool = False) -> str | None:
    if os.geteuid() != 0:
        return "needs root (FUSE mounts as root, drop_caches)"
    if not os.path.exists("/dev/fuse"):
        return "needs /dev/fuse"
    if shutil.which("nginx") is None:
        return "needs nginx"
    if reference and shutil.which("fusermount3") is None:
        return "--reference-cvmfs2 needs fusermount3"
    return None


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks: unmount, stop nginx


def image_rows(args: argparse.Namespace, results: Results, env: Env, server: Any,
               reference: Reference | None, spec: Spec, drop: bool) -> None:
    """The container-image rows (bench/client_image.py) on the same nginx."""
    if shutil.which("bwrap") is None:
        results.notes.append("image rows skipped: needs bwrap")
        return
    options = ImageOptions(workdir=env.base.parent, rounds=args.rounds, drop=drop,
                           scope="etc" if args.quick else "",
                           backend=args.backend, read_ahead_kb=args.read_ahead_kb)
    print(f"image rows ({args.rounds} interleaved rounds):", flush=True)
    bench_image(results, options, env, AccessLog(server.run / "access.log"), server.publish,
                reference, env if spec.many else None, "many" if spec.many else None,
                tree_cached=not args.image_only)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = preflight(args.reference_cvmfs2 is not None)
    if problem:
        print(f"bench/client.py: {problem}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    compile_package()
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    spec = Spec(entries=args.entries, big_bytes=int(args.size_gb * 1e9),
                par_files=PARALLEL_READERS, par_bytes=int(args.parallel_mb * MB),
                many=args.rss_entries, seed=args.seed)
    workdir = args.workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)  # nginx workers run as nobody (Nginx.publish checks the parents)
    base = ensure_repository(workdir, spec, args.chunk_sizes)
    info = json.loads((base / "ready.json").read_text())
    run_dir = workdir / "run"
    reference = (Reference(args.reference_cvmfs2, run_dir / "cvmfs2")
                 if args.reference_cvmfs2 is not None else None)
    if run_dir.exists():
        unmount_below(run_dir)  # left by a killed run
        shutil.rmtree(run_dir)
    with journaled_scratch(run_dir, SCRATCH_BYTES) as problem:
        return _measure(args, spec, info, base, run_dir, reference, problem)


def _measure(args: argparse.Namespace, spec: Spec, info: dict[str, Any], base: Path,
             run_dir: Path, reference: Reference | None, scratch_problem: str | None) -> int:
    """The rows, with caches and mount points below `run_dir`, then the table."""
    from tests.servers import Nginx  # importable once `main` put the repository on the path

    for d in (run_dir / "mnt", run_dir / "etc"):
        d.mkdir(parents=True)
    drop = not args.no_drop_caches
    backend = args.backend or _default_backend()
    print(f"tree: {spec.entries:,} entries in tree/, data/big.bin {spec.big_bytes / MB:,.0f} MB, "
          f"{spec.par_files} x {spec.par_bytes / MB:,.1f} MB in data/par/, "
          f"{spec.many:,} entries in many/; storage {info['storage_bytes'] / MB:,.0f} MB")
    print(f"backend: {backend}{'' if args.backend else ' (default)'}; page cache "
          f"{'dropped (echo 3 > /proc/sys/vm/drop_caches) where noted' if drop else 'NOT dropped'}")
    results = Results()
    results.notes.append(f"backend {backend}; {os.cpu_count()} cores; load average before: "
                         f"{os.getloadavg()[0]:.2f}")
    results.notes.append("client caches on a fresh journaled ext4 (loop-mounted)"
                         if scratch_problem is None else
                         f"client caches in {run_dir} ({scratch_problem} for a fresh journaled "
                         "ext4): on ext4 without a journal, cold rows may include kernel scans "
                         "past recently deleted inodes")
    if not drop:
        results.notes.append("page cache NOT dropped: local and warm reads may come from memory")
    started = time.perf_counter()
    try:
        with Nginx() as server:
            server.publish(f"cvmfs/{FQRN}", base / "storage")
            env = Env(base=base, run=run_dir, url=server.url, backend=args.backend,
                      quota_mb=int(info["storage_bytes"] * 1.5 / MIB) + 1024,
                      read_ahead_kb=args.read_ahead_kb)
            if not args.image_only:
                run(env, spec, results, drop, args.local_rounds, reference)
            if not args.no_image:
                image_rows(args, results, env, server, reference, spec, drop)
    finally:
        unmount_below(run_dir)  # a mount's own exit failed: last resort
        shutil.rmtree(run_dir, ignore_errors=True)
    print(f"(measured in {time.perf_counter() - started:.1f} s)")
    print_table(results)
    if args.json:
        report: dict[str, Any] = {
            "spec": asdict(spec), "backend": backend, "drop_caches": drop,
            "read_ahead_kb": args.read_ahead_kb, "storage_bytes": info["storage_bytes"],
            "notes": results.notes,
            "rows": [dict(asdict(r), rate=r.rate) for r in results.rows
                     if r.name not in results.reference],
        }
        if reference is not None:
            report["reference_cvmfs2"] = {
                "binary": str(reference.binary), "version": reference.version,
                "rows": [dict(asdict(r), rate=r.rate) for r in results.rows
                         if r.name in results.reference],
                "pairs": [{"pycvmfs": a.name, "cvmfs2": b.name, "unit": a.unit,
                           "pycvmfs_seconds": a.seconds, "cvmfs2_seconds": b.seconds,
                           "pycvmfs_amount": a.amount, "cvmfs2_amount": b.amount,
                           "x_cvmfs2": x_reference(a, b)} for a, b in results.pairs],
            }
        args.json.write_text(json.dumps(report, indent=1))
    failed = any(r.passed is False for r in results.rows)
    return 1 if args.strict and failed else 0


if __name__ == "__main__":
    sys.exit(main())
