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
    this script's own threads excluded): a high value marks a disturbed measurement. The
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
    cvmfs2 seconds for each paired measurement (memory: MB / MB). In --json they are under
    "reference_cvmfs2". Its mounts are unmounted with `fusermount3 -u` (then `-u -z`).

The tree, the keys and the published repository are cached under `--workdir` (keyed by
the sizes and seed) so re-runs skip the setup; the client cache and mount point are made
fresh every run. Run from the repository root: `python bench/client.py [--quick]`.
Needs root (drop_caches, FUSE mounts), /dev/fuse and nginx.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
FQRN = "bench-client.local"
MB = 1_000_000
MIB = 1024 * 1024
READ_BLOCK = MIB
GEN_PIECE = 16 * MIB
PARALLEL_READERS = 8

TARGET_WARM_WALK_X = 2.0  # warm walk seconds <= 2x the warm local walk
TARGET_COLD_WALK_X = 5.0  # cold walk seconds <= 5x the cold local walk
TARGET_COLD_READ_MB_S = 200.0
TARGET_WARM_READ_SHARE = 0.5  # warm read MB/s >= 50 % of local disk
TARGET_RSS_MB = 150.0

MOUNT_TIMEOUT_S = 120.0
UMOUNT_TIMEOUT_S = 60.0
EXIT_WAIT_S = 20.0


# -- the generated tree --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spec:
    entries: int  # entries of tree/ (the walk)
    big_bytes: int  # data/big.bin
    par_files: int
    par_bytes: int  # data/par/p<i>.bin each
    many: int  # entries of many/ (the RSS walk); 0: none
    seed: int

    @property
    def name(self) -> str:
        return (f"e{self.entries}-b{self.big_bytes}-p{self.par_files}x{self.par_bytes}"
                f"-m{self.many}-s{self.seed}")


def write_random(path: Path, size: int, seed: int) -> None:
    """`size` incompressible bytes, deterministic for `seed`, in bounded pieces."""
    rng = np.random.default_rng(seed)
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            n = min(GEN_PIECE, left)
            fh.write(rng.bytes(n))
            left -= n


def make_tree(root: Path, entries: int, rng: random.Random, *, empty_files: bool,
              catalogs: int) -> None:
    """`entries` entries below `root`: ~5 % directories (random depth), ~5 % symlinks, the
    rest small files (text-like, 0-16 KiB; empty with `empty_files`); `.cvmfscatalog`
    markers in the first `catalogs` top-level directories make nested catalogs."""
    root.mkdir(parents=True)
    n_dirs = max(1, entries // 20)
    n_links = entries // 20
    top = min(catalogs, n_dirs)
    markers = top
    n_files = max(0, entries - n_dirs - n_links - markers)
    dirs: list[str] = []
    for i in range(n_dirs):
        parent = "" if i < max(top, 1) else rng.choice(dirs)
        name = f"d{i:05d}"
        dirs.append(f"{parent}/{name}" if parent else name)
        (root / dirs[-1]).mkdir()
    for d in dirs[:markers]:
        (root / d / ".cvmfscatalog").write_bytes(b"")
    files: list[str] = []
    for i in range(n_files):
        parent = rng.choice(dirs)
        rel = f"{parent}/f{i:06d}.txt"
        files.append(rel)
        if empty_files:
            (root / rel).write_bytes(b"")
        else:
            size = min(int(rng.lognormvariate(7.0, 1.2)), 16 * 1024)
            (root / rel).write_bytes((rng.randbytes(size // 2 + 1).hex()[:size]).encode())
    for i in range(n_links):
        parent = rng.choice(dirs)
        target = rng.choice(files or dirs)
        depth = parent.count("/") + 1
        (root / parent / f"l{i:05d}").symlink_to("../" * depth + target)


def generate(src: Path, spec: Spec) -> None:
    rng = random.Random(spec.seed)
    make_tree(src / "tree", spec.entries, rng, empty_files=False, catalogs=10)
    data = src / "data"
    (data / "par").mkdir(parents=True)
    write_random(data / "big.bin", spec.big_bytes, spec.seed * 1000 + 1)
    for i in range(spec.par_files):
        write_random(data / "par" / f"p{i}.bin", spec.par_bytes, spec.seed * 1000 + 10 + i)
    if spec.many:
        make_tree(src / "many", spec.many, rng, empty_files=True,
                  catalogs=max(1, spec.many // 10_000))


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def pycvmfs(*args: str, env: dict[str, str] | None = None, timeout: float = 3600,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "pycvmfs", *args], cwd=REPO_ROOT,
                          env=env or child_env(), capture_output=True, text=True,
                          timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"pycvmfs {' '.join(args)} failed ({done.returncode}):\n"
                           f"{done.stdout}{done.stderr}")
    return done


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def ensure_repository(workdir: Path, spec: Spec, chunk_sizes: str | None) -> Path:
    """Generate + publish once per spec; WORKDIR/<spec>/ready.json marks a finished setup."""
    base = workdir / (spec.name + (f"-c{chunk_sizes.replace(',', '_')}" if chunk_sizes else ""))
    ready = base / "ready.json"
    if ready.exists():
        print(f"setup: reusing {base} (delete it to regenerate)")
        return base
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    base.chmod(0o755)  # nginx workers (nobody) read the storage below it
    started = time.perf_counter()
    print(f"setup: generating the tree in {base / 'src'} ...", flush=True)
    generate(base / "src", spec)
    print(f"setup: generated in {time.perf_counter() - started:.1f} s; creating keys and "
          "publishing ...", flush=True)
    pycvmfs("keys", "create", FQRN, "--keys-dir", str(base / "keys"))
    extra = ["--chunk-sizes", chunk_sizes] if chunk_sizes else []
    t0 = time.perf_counter()
    done = pycvmfs("publish", str(base / "src"), "--repo", FQRN, "--storage",
                   str(base / "storage"), "--keys-dir", str(base / "keys"), *extra)
    publish_s = time.perf_counter() - t0
    for line in done.stdout.strip().splitlines():
        print(f"  [publish] {line}")
    info = {"spec": asdict(spec), "storage_bytes": du(base / "storage"),
            "publish_seconds": publish_s, "chunk_sizes": chunk_sizes}
    ready.write_text(json.dumps(info, indent=1))
    print(f"setup: done in {time.perf_counter() - started:.1f} s", flush=True)
    return base


# -- system probes -------------------------------------------------------------------


def _default_backend() -> str:
    """The binding `pycvmfs mount` would pick (for the table's notes)."""
    from pycvmfs.fs.mount import load_backend

    return load_backend()[0]


def drop_caches(enabled: bool) -> bool:
    """sync + drop page cache, dentries and inodes (root only); False if not done."""
    if not enabled:
        return False
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
    except OSError as exc:
        print(f"warning: cannot drop caches ({exc}); local reads may come from memory")
        return False
    return True


def process_cpu(pid: int) -> float | None:
    """user+sys CPU seconds of `pid` (all threads), None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def system_busy() -> float | None:
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of `pid` in MB (10^6 bytes)."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024 / MB
    return values["VmRSS"], values["VmHWM"]


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


# -- workloads -----------------------------------------------------------------------


def walk(root: Path) -> int:
    """os.walk + lstat of every entry below `root`; the number of entries."""
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lstat(os.path.join(dirpath, name))
            count += 1
    return count


def read_file(path: Path) -> int:
    """Read `path` sequentially in 1 MiB reads into one buffer; bytes read."""
    buf = bytearray(READ_BLOCK)
    total = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while n := os.readv(fd, [buf]):
            total += n
    finally:
        os.close(fd)
    return total


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


def warm_files(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            read_file(path)


# -- mounts --------------------------------------------------------------------------


@dataclass(slots=True)
class Env:
    base: Path  # the cached setup of one spec
    run: Path  # per-run scratch: cache, mount point, empty config root
    url: str
    backend: str | None
    quota_mb: int
    read_ahead_kb: int | None

    @property
    def mnt(self) -> Path:
        return self.run / "mnt"

    @property
    def cache(self) -> Path:
        return self.run / "cache"


class ClientMount:
    """One FUSE mount made by some client; always unmounted (its process gone) on exit.

    Subclasses mount in `_mount` and unmount in `_unmount`; `pid` is the mount process
    (read from the `user.pid` xattr of the mount root, which both clients provide)."""

    def __init__(self, mnt: Path, read_ahead_kb: int | None) -> None:
        self.mnt = mnt
        self.want_read_ahead_kb = read_ahead_kb
        self.pid = 0
        self.seconds = 0.0
        self.read_ahead_kb: int | None = None

    def __enter__(self) -> ClientMount:
        if os.path.ismount(self.mnt):
            raise RuntimeError(f"{self.mnt} is already mounted")
        started = time.perf_counter()
        try:
            self._mount()
            self.seconds = time.perf_counter() - started
            self.pid = int(os.getxattr(self.mnt, "user.pid"))
            self.read_ahead_kb = self._read_ahead(self.want_read_ahead_kb)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _mount(self) -> None:
        raise NotImplementedError

    def _unmount(self) -> None:
        raise NotImplementedError

    def _read_ahead(self, value: int | None) -> int | None:
        """The mount's bdi read-ahead in KiB (set to `value` first if given)."""
        dev = os.stat(self.mnt).st_dev
        knob = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
        try:
            if value is not None:
                knob.write_text(f"{value}\n")
            return int(knob.read_text())
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc: object) -> None:
        if os.path.ismount(self.mnt):
            self._unmount()
        deadline = time.monotonic() + EXIT_WAIT_S
        while self.pid and pid_alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.pid and pid_alive(self.pid):  # the mount process this run started
            print(f"warning: mount process {self.pid} still running; killing it")
            os.kill(self.pid, signal.SIGKILL)

    def memory_mb(self) -> tuple[float, float]:
        return memory_mb(self.pid)


class Mount(ClientMount):
    """One background `pycvmfs mount`."""

    def __init__(self, env: Env) -> None:
        super().__init__(env.mnt, env.read_ahead_kb)
        self.env = env

    def _mount(self) -> None:
        env = self.env
        options = {
            "CVMFS_SERVER_URL": env.url + "/cvmfs/@fqrn@",
            "CVMFS_HTTP_PROXY": "DIRECT",
            "CVMFS_CACHE_BASE": str(env.cache),
            "CVMFS_PUBLIC_KEY": str(env.base / "keys" / f"{FQRN}.pub"),
            "CVMFS_QUOTA_LIMIT": str(env.quota_mb),
        }
        argv = ["mount", FQRN, str(env.mnt)]
        for key, value in options.items():
            argv += ["-o", f"{key}={value}"]
        if env.backend:
            argv += ["--backend", env.backend]
        pycvmfs(*argv, env=child_env(PYCVMFS_CONFIG_ROOT=str(env.run / "etc")),
                timeout=MOUNT_TIMEOUT_S)

    def _unmount(self) -> None:
        mnt = self.mnt
        done = pycvmfs("umount", str(mnt), timeout=UMOUNT_TIMEOUT_S, check=False)
        if done.returncode != 0 and os.path.ismount(mnt):
            print(f"warning: umount failed ({done.stderr.strip()}); lazy unmount")
            subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


@dataclass(slots=True)
class Reference:
    """The reference CernVM-FS client `cvmfs2`: its own mount point, cache and sockets."""

    binary: Path
    dir: Path  # per-run scratch of the reference mounts
    version: str = ""  # its `user.version` xattr, once mounted

    @property
    def mnt(self) -> Path:
        return self.dir / "mnt"

    @property
    def cache(self) -> Path:
        return self.dir / "cache"

    @property
    def config(self) -> Path:
        return self.dir / "cvmfs2.conf"

    def write_config(self, env: Env) -> None:
        """A config file that cvmfs2 reads alone (`-o config=`): no /etc/cvmfs needed."""
        for d in (self.mnt, self.cache, self.dir / "sockets"):
            d.mkdir(parents=True, exist_ok=True)
        options = {
            "CVMFS_SERVER_URL": env.url + "/cvmfs/@fqrn@",
            "CVMFS_HTTP_PROXY": "DIRECT",
            "CVMFS_PUBLIC_KEY": str(env.base / "keys" / f"{FQRN}.pub"),
            "CVMFS_CACHE_BASE": str(self.cache),
            "CVMFS_SHARED_CACHE": "no",
            "CVMFS_RELOAD_SOCKETS": str(self.dir / "sockets"),
            "CVMFS_USER": "root",
            "CVMFS_CLAIM_OWNERSHIP": "no",
            "CVMFS_CHECK_PERMISSIONS": "no",
            "CVMFS_QUOTA_LIMIT": "-1",
            "CVMFS_USE_GEOAPI": "no",
            "CVMFS_SEND_INFO_HEADER": "no",
            "CVMFS_TIMEOUT": "5",
            "CVMFS_TIMEOUT_DIRECT": "5",
            "CVMFS_MAX_RETRIES": "1",
        }
        self.config.write_text("".join(f"{k}={v}\n" for k, v in options.items()))

    def env(self) -> dict[str, str]:
        """cvmfs2 loads libcvmfs_fuse*_stub.so from CVMFS_LIBRARY_PATH (a build directory)."""
        env = dict(os.environ)
        if any(self.binary.parent.glob("libcvmfs_fuse*_stub.so")):
            env["CVMFS_LIBRARY_PATH"] = str(self.binary.parent) + "/"
        return env


def unmount_fuse(mnt: Path) -> None:
    """`fusermount3 -u`, then `fusermount3 -u -z` if the mount is still there."""
    done = subprocess.run(["fusermount3", "-u", str(mnt)], check=False, capture_output=True,
                          text=True, timeout=UMOUNT_TIMEOUT_S)
    if done.returncode != 0 and os.path.ismount(mnt):
        print(f"warning: fusermount3 -u failed ({done.stderr.strip()}); lazy unmount")
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False, capture_output=True,
                       timeout=UMOUNT_TIMEOUT_S)


class Cvmfs2Mount(ClientMount):
    """One `cvmfs2` mount (it daemonizes; the FUSE process is found via `user.pid`)."""

    def __init__(self, ref: Reference, read_ahead_kb: int | None) -> None:
        super().__init__(ref.mnt, read_ahead_kb)
        self.ref = ref

    def _mount(self) -> None:
        ref = self.ref
        argv = [str(ref.binary), "-o", f"config={ref.config},allow_other,fsname=cvmfs2",
                FQRN, str(ref.mnt)]
        done = subprocess.run(argv, cwd=ref.binary.parent, env=ref.env(), capture_output=True,
                              text=True, timeout=MOUNT_TIMEOUT_S)
        if done.returncode != 0 or not os.path.ismount(ref.mnt):
            raise RuntimeError(f"cvmfs2 mount failed ({done.returncode}):\n"
                               f"{done.stdout}{done.stderr}")
        with suppress(OSError):
            ref.version = os.getxattr(ref.mnt, "user.version").decode().strip()

    def _unmount(self) -> None:
        unmount_fuse(self.mnt)


# -- results -------------------------------------------------------------------------


@dataclass(slots=True)
class Row:
    name: str
    seconds: float
    amount: float  # entries, or bytes
    unit: str  # "entries" | "bytes" | "op" (rate not shown) | "MB" (memory: amount is MB)
    baseline: str | None = None  # name of the local row it is compared with
    ratio: float | None = None  # seconds / baseline seconds
    target: str = ""
    passed: bool | None = None
    mount_cpu: float | None = None  # cores (CPU s / wall s) of the mount process
    others: float | None = None  # cores used by everything else
    note: str = ""

    @property
    def rate(self) -> str:
        if self.unit == "MB":
            return f"{self.amount:.1f} MB"
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
            if row.unit not in ("MB", "op") and base.seconds > 0:
                row.ratio = (row.seconds / base.seconds) * (base.amount / row.amount
                                                            if row.amount else 1.0)
        self.rows.append(row)
        print(f"  {row.name}: "
              + (f"{row.seconds:.2f} s, " if row.unit != "MB" else "") + row.rate
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


def print_table(results: Results) -> None:
    header = (f"{'measurement':<48} {'seconds':>8} {'rate':>16} {'x local':>8} "
              f"{'mnt CPU':>8} {'others':>7} {'target':>18} {'result':>6}")
    print()
    print(header)
    print("-" * len(header))
    for r in results.rows:
        seconds = f"{r.seconds:8.2f}" if r.unit != "MB" else f"{'':>8}"
        ratio = f"{r.ratio:7.2f}x" if r.ratio is not None else f"{'':>8}"
        short = r.seconds < 0.1  # a few clock ticks: CPU shares would be noise
        cpu = f"{r.mount_cpu:7.2f}c" if r.mount_cpu is not None and not short else f"{'':>8}"
        others = f"{r.others:6.2f}c" if r.others is not None and not short else f"{'':>7}"
        verdict = "" if r.passed is None else ("PASS" if r.passed else "FAIL")
        print(f"{r.name:<48} {seconds} {r.rate:>16} {ratio} {cpu} {others} "
              f"{r.target:>18} {verdict:>6}")
    print("(x local = seconds / seconds of the same work on local disk; mnt CPU = CPU cores "
          "the mount process used; others = cores used by all other processes -- nginx, other "
          f"users -- this script excluded; {os.cpu_count()} cores here)")
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
    amounts differ); for memory rows MB / MB."""
    if mine.unit == "MB":
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
        if mine.unit == "MB":
            a, b = f"{'':>8}", f"{'':>8}"
        else:
            a, b = f"{mine.seconds:8.2f}", f"{ref.seconds:8.2f}"
        x = x_reference(mine, ref)
        ratio = f"{x:8.2f}x" if x is not None else f"{'':>9}"
        print(f"{mine.name:<48} {a} {mine.rate:>16} {b} {ref.rate:>16} {ratio}")
    print("(x cvmfs2 = pycvmfs seconds / cvmfs2 seconds for the same work, both against the "
          "same nginx and local rows; memory rows: pycvmfs MB / cvmfs2 MB)")


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
             "local_rounds": 1}
    full = {"entries": 20_000, "size_gb": 1.0, "parallel_mb": 64.0, "rss_entries": 100_000,
            "local_rounds": 3}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.quick:
        args.no_drop_caches = True
    if (args.entries < 20 or args.size_gb <= 0 or args.parallel_mb <= 0
            or args.rss_entries < 0 or args.local_rounds < 1):
        parser.error("sizes and rounds must be positive (--entries at least 20)")
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = preflight(args.reference_cvmfs2 is not None)
    if problem:
        print(f"bench/client.py: {problem}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from tests.servers import Nginx

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
    ref_mnt = run_dir / "cvmfs2" / "mnt"
    if run_dir.exists():
        if os.path.ismount(run_dir / "mnt"):
            subprocess.run(["umount", "-l", str(run_dir / "mnt")], check=False)
        if os.path.ismount(ref_mnt):  # left by a killed run
            subprocess.run(["fusermount3", "-u", "-z", str(ref_mnt)], check=False)
        shutil.rmtree(run_dir)
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
    if not drop:
        results.notes.append("page cache NOT dropped: local and warm reads may come from memory")
    started = time.perf_counter()
    try:
        with Nginx() as server:
            server.publish(f"cvmfs/{FQRN}", base / "storage")
            env = Env(base=base, run=run_dir, url=server.url, backend=args.backend,
                      quota_mb=int(info["storage_bytes"] * 1.5 / MIB) + 1024,
                      read_ahead_kb=args.read_ahead_kb)
            run(env, spec, results, drop, args.local_rounds, reference)
    finally:
        if os.path.ismount(run_dir / "mnt"):  # a Mount's own exit failed: last resort
            subprocess.run(["umount", "-l", str(run_dir / "mnt")], check=False)
        if os.path.ismount(ref_mnt):  # a Cvmfs2Mount's own exit failed: last resort
            unmount_fuse(ref_mnt)
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
