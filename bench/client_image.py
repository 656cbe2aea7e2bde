"""Container-image rows of `bench/client.py`: many small files, listings, mounts, starts.

The image is the test image "python" of `tests/images.py` (Debian bookworm minbase +
python3), ingested by `pycvmfs ingest oci:LAYOUT:python --skip-layers` into a repository of
its own (cached under the workdir like the tree), and -- when the ingest offers
`--start-set` -- a second time into another repository with `--start-set` for the start
command. Every measurement runs on the image's flat rootfs in the repository, for each
client (pycvmfs, and cvmfs2 when given, on the same repository from the same nginx) and on
the local unpacked rootfs (the "x local" baseline), interleaved: each round measures local,
pycvmfs, cvmfs2 in turn; rows show the median of `--rounds` rounds.

Per client and round, each a fresh mount:
  1. empty cache (page cache dropped, then the storage nginx serves read back into it):
     8 threads read every regular file of the image (1 MiB reads): MB/s, the
     mount process's CPU seconds, what nginx sent meanwhile (% of the image's regular file
     bytes) and objects fetched twice (object URLs answered 200 more than once);
  2. cache filled, page cache dropped before mounting: the same read;
  3. cache filled: `ls -lR` of the image (fresh mount), again (same mount), then the mount
     process's VmRSS; the mount seconds of 1 and 2 are the "mount" rows (the command a user
     runs: `pycvmfs mount` in the background until mounted, or `cvmfs2`);
  4. cache filled: container start, `bwrap` (the argument list of
     `pycvmfs.images.runner.BwrapRunner`, identical for every client) running
     START_COMMAND on the mounted rootfs;
  5. empty cache: the same start, with bytes fetched and objects fetched twice;
  6. empty cache, the start-set repository: the same start (pycvmfs prefetches the set).
Bytes are counted until nginx has logged nothing for 0.3 s after the timed work (a
prefetch still running in the background is the client's too; at most 5 s).
And, in the first round only (it takes minutes), `ls -lR` of the tree's many/ directory in
a fresh mount (catalogs cached), when the run has one. The page cache is dropped before 1
and 2 only (with root, unless --no-drop-caches); starts and listings run with the cache
files as the previous steps left them, the same for both clients. With --quick only the
image's /etc is read and listed (starts use the whole image).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import threading
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.client_mounts import ClientMount, Cvmfs2Mount, Env, Mount, Reference
from bench.client_results import Results, Row, Sample, median_row, sample
from bench.common import (
    MB,
    MIB,
    AccessLog,
    drop_caches,
    memory_mb,
    pycvmfs,
    read_file,
    warm_files,
)

IMAGE_FQRN = "bench-image.local"
START_SET_FQRN = "bench-startset.local"
PUBLIC_NAME = "bench.local/ns/debian:python"
START_COMMAND = ("python3", "-c", "import json, email, http.client")
READERS = 8
STEP_TIMEOUT_S = 300.0


@dataclass(frozen=True, slots=True)
class ImageRepo:
    """An ingested image repository: keys/ and storage/ below `base`."""

    fqrn: str
    base: Path
    rootfs: str  # the flat rootfs, relative to the repository root
    storage_bytes: int
    warnings: tuple[str, ...] = ()  # what the ingest warned about (a failed start set)


@dataclass(frozen=True, slots=True)
class ImageOptions:
    workdir: Path
    rounds: int
    drop: bool
    scope: str  # the image directory read and listed ("": all of it)
    backend: str | None
    read_ahead_kb: int | None


@dataclass(frozen=True, slots=True)
class Side:
    """One client's mounts of the image repositories (and of the tree, for many/)."""

    name: str  # "pycvmfs" | "cvmfs2"
    image: Callable[[], ClientMount]
    image_cache: Path
    start_set: Callable[[], ClientMount] | None
    start_set_cache: Path | None
    tree: Callable[[], ClientMount] | None


def start_set_supported() -> bool:
    """Whether this pycvmfs's ingest records start sets (`--start-set`)."""
    return "--start-set" in pycvmfs("ingest", "--help", timeout=60).stdout


def ensure_image_repo(workdir: Path, layout: Path, digest: str, fqrn: str,
                      start_set: tuple[str, ...] | None) -> ImageRepo:
    """Ingest the image once per (image, fqrn); WORKDIR/image-.../ready.json marks it."""
    name = f"image-{fqrn}-{digest.replace(':', '-')[:19]}"
    if start_set:  # a new command makes a new repository
        name += "-" + hashlib.sha256(shlex.join(start_set).encode()).hexdigest()[:8]
    base = workdir / name
    ready = base / "ready.json"
    if not ready.exists():
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        base.chmod(0o755)  # nginx workers (nobody) read the storage below it
        print(f"setup: ingesting the image into {base} ...", flush=True)
        pycvmfs("keys", "create", fqrn, "--keys-dir", str(base / "keys"))
        extra = ["--start-set", shlex.join(start_set)] if start_set else []
        done = pycvmfs("ingest", f"oci:{layout}:python", "--as", PUBLIC_NAME, "--repo", fqrn,
                       "--storage", str(base / "storage"), "--keys-dir", str(base / "keys"),
                       "--work", str(base / "work"), "--skip-layers", *extra)
        said = (done.stdout + done.stderr).strip().splitlines()
        for line in said:
            print(f"  [ingest] {line}")
        link = base / "work" / PUBLIC_NAME
        rootfs = os.path.normpath(link.parent / os.readlink(link))
        info = {"rootfs": os.path.relpath(rootfs, base / "work"),
                "warnings": [line for line in said if "warn" in line.lower()],
                "storage_bytes": sum(p.stat().st_size for p in (base / "storage").rglob("*")
                                     if p.is_file())}
        ready.write_text(json.dumps(info, indent=1))
    info = json.loads(ready.read_text())
    return ImageRepo(fqrn, base, str(info["rootfs"]), int(info["storage_bytes"]),
                     tuple(info.get("warnings", ())))


# -- workloads -----------------------------------------------------------------------


_buffers = threading.local()


def _read_one(path: Path) -> int:
    buf = getattr(_buffers, "buf", None)
    if buf is None:
        buf = _buffers.buf = bytearray(MIB)
    return read_file(path, buf)


def read_all(root: Path, files: list[str]) -> int:
    """Read every file of `files` below `root` with READERS threads; bytes read."""
    with ThreadPoolExecutor(max_workers=READERS) as pool:
        return sum(pool.map(_read_one, (root / f for f in files)))


def ls_lr(root: Path) -> None:
    subprocess.run(["ls", "-lR", str(root)], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False, timeout=STEP_TIMEOUT_S)


def start(argv: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=STEP_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"container start failed ({done.returncode}): {done.stderr[-500:]}")


@dataclass(frozen=True, slots=True)
class Image:
    """The local unpacked image: its files and the start command line (on any root)."""

    rootfs: Path
    scope: str  # the directory read and listed, relative ("" : the whole image)
    files: list[str]  # regular files below scope, relative to rootfs
    entries: int  # entries below scope
    file_bytes: int  # regular file bytes of the whole image (what "%" rows compare with)
    argv: list[str]  # bwrap ... with `rootfs` as the root
    env: dict[str, str]

    @classmethod
    def load(cls, rootfs: Path, config: dict[str, object], scope: str) -> Image:
        from pycvmfs.images.runner import BwrapRunner, RunRequest
        from pycvmfs.images.singularity import ImageConfig

        files, entries, size = [], 0, 0
        inside = os.path.join(rootfs, scope) if scope else str(rootfs)
        for dirpath, dirnames, filenames in os.walk(rootfs):
            counted = dirpath == inside or dirpath.startswith(inside + os.sep)
            entries += (len(dirnames) + len(filenames)) if counted else 0
            for name in filenames:
                st = os.lstat(os.path.join(dirpath, name))
                if (st.st_mode & 0o170000) == 0o100000:
                    size += st.st_size
                    if counted:
                        files.append(os.path.relpath(os.path.join(dirpath, name), rootfs))
        bwrap = shutil.which("bwrap") or "bwrap"
        runner = BwrapRunner(bwrap, new_session=True)
        invocation = runner.invocation(RunRequest.for_image(
            rootfs, START_COMMAND, ImageConfig.from_oci(config)))
        return cls(rootfs, scope, sorted(files), entries, size, list(invocation.argv),
                   dict(invocation.env))

    def start_on(self, root: Path) -> Callable[[], float]:
        argv = [str(root) if a == str(self.rootfs) else a for a in self.argv]

        def run() -> float:
            start(argv, self.env)
            return 1.0
        return run


# -- the rounds ----------------------------------------------------------------------


def empty(cache: Path) -> None:
    """An empty client cache directory (the client fills it on mounting)."""
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)


class ImageBench:
    """Collects samples per (measurement, client) over interleaved rounds."""

    def __init__(self, image: Image, repo: ImageRepo, log: AccessLog, options: ImageOptions,
                 many: Path | None, many_local: Path | None, storages: list[Path]) -> None:
        self.image, self.repo, self.log, self.options = image, repo, log, options
        self.storages = storages  # what nginx serves: kept in the page cache
        self.many = many  # the tree's many/ below a mount root, or None
        self.many_local = many_local  # the same on local disk
        self.samples: dict[tuple[str, str], list[Sample]] = defaultdict(list)

    def add(self, key: str, who: str, s: Sample) -> None:
        self.samples[(key, who)].append(s)

    def local_round(self) -> None:
        image, drop = self.image, self.options.drop
        drop_caches(drop)
        self.add("read", "local", sample(lambda: read_all(image.rootfs, image.files)))
        self.add("ls", "local",
                 sample(lambda: (ls_lr(image.rootfs / image.scope), image.entries)[1]))
        self.add("start", "local", sample(image.start_on(image.rootfs)))
        if (self.many is not None and self.many_local is not None
                and not self.samples[("ls many", "local")]):
            many = self.many_local
            self.add("ls many", "local", sample(lambda: (ls_lr(many), 1)[1]))

    def warm_storage(self) -> None:
        """Read the repositories' storage, so nginx serves from the page cache."""
        for storage in self.storages:
            warm_files(storage)

    def progress(self, who: str) -> None:
        """One line with this round's seconds of `who` (the rows come at the end)."""
        last = {key: samples[-1].seconds for (key, name), samples in self.samples.items()
                if name == who and samples and samples[-1].seconds > 0}
        print(f"  {who}: " + ", ".join(f"{key} {sec:.2f} s" for key, sec in last.items()),
              flush=True)

    def served(self, key: str, who: str, s: Sample) -> None:
        """`s` and what nginx sent during it (`fetched`: % of the image, `twice`)."""
        self.add(key, who, s)
        self.log.settle()  # background fetches (a start set's prefetch) count too
        got = self.log.served()
        self.add(key + " fetched", who, Sample(0.0, 100 * got.bytes / self.image.file_bytes))
        self.add(key + " twice", who, Sample(0.0, got.twice))

    def client_round(self, side: Side) -> None:
        image, drop, who = self.image, self.options.drop, side.name
        empty(side.image_cache)
        if drop_caches(drop):
            self.warm_storage()
        with side.image() as m:
            self.add("mount empty", who, Sample(m.seconds, 1))
            root = m.mnt / self.repo.rootfs
            self.log.skip()
            s = sample(lambda: read_all(root, image.files), m.pid)
            self.served("read cold", who, s)
            self.add("read cold cpu", who, Sample(0.0, s.cpu_seconds))
        drop_caches(drop)
        with side.image() as m:
            self.add("mount filled", who, Sample(m.seconds, 1))
            s = sample(lambda: read_all(m.mnt / self.repo.rootfs, image.files), m.pid)
            self.add("read warm", who, s)
            self.add("read warm cpu", who, Sample(0.0, s.cpu_seconds))
        if drop:
            self.warm_storage()  # for the cold starts
        with side.image() as m:
            root = m.mnt / self.repo.rootfs / image.scope
            self.add("ls fresh", who, sample(lambda: (ls_lr(root), image.entries)[1], m.pid))
            self.add("ls repeat", who, sample(lambda: (ls_lr(root), image.entries)[1], m.pid))
            self.add("rss", who, Sample(0.0, memory_mb(m.pid)[0]))
        with side.image() as m:
            self.add("start warm", who,
                     sample(image.start_on(m.mnt / self.repo.rootfs), m.pid))
        empty(side.image_cache)
        with side.image() as m:
            self.log.skip()
            self.served("start cold", who,
                        sample(image.start_on(m.mnt / self.repo.rootfs), m.pid))
        if side.start_set is not None and side.start_set_cache is not None:
            empty(side.start_set_cache)
            with side.start_set() as m:
                self.log.skip()
                self.served("start set", who,
                            sample(image.start_on(m.mnt / self.repo.rootfs), m.pid))
        listed = bool(self.samples[("ls many", who)])
        if side.tree is not None and self.many is not None and not listed:
            many = self.many
            with side.tree() as m:
                self.add("ls many", who, sample(lambda: (ls_lr(m.mnt / many), 1)[1], m.pid))


# (key, row name template, unit, baseline key); {c} is the client
ROWS: list[tuple[str, str, str, str | None]] = [
    ("read cold", "img {n} readers {c}, empty cache", "bytes", "read"),
    ("read cold cpu", "  {c} CPU seconds, empty cache", "CPU s", None),
    ("read cold fetched", "  {c} fetched, % of the image", "%", None),
    ("read cold twice", "  {c} objects fetched twice", "count", None),
    ("read warm", "img {n} readers {c}, cache filled", "bytes", "read"),
    ("read warm cpu", "  {c} CPU seconds, cache filled", "CPU s", None),
    ("mount filled", "img mount {c}, cache filled", "op", None),
    ("mount empty", "img mount {c}, empty cache", "op", None),
    ("ls fresh", "img ls -lR {c}, fresh mount", "entries", "ls"),
    ("ls repeat", "img ls -lR {c}, repeat (same mount)", "entries", "ls"),
    ("ls many", "ls -lR many/ {c}, fresh mount", "op", "ls many"),
    ("rss", "img VmRSS {c} after ls -lR", "MB", None),
    ("start warm", "start {c}, cache filled (fresh mount)", "op", "start"),
    ("start cold", "start {c}, empty cache", "op", "start"),
    ("start cold fetched", "  {c} fetched, % of the image", "%", None),
    ("start cold twice", "  {c} objects fetched twice", "count", None),
    ("start set", "start {c}, empty cache, start set", "op", "start"),
    ("start set fetched", "  {c} fetched, % of the image", "%", None),
    ("start set twice", "  {c} objects fetched twice", "count", None),
]
LOCAL_ROWS = {"read": "img {n} readers local ({d})", "ls": "img ls -lR local",
              "ls many": "ls -lR many/ local", "start": "start local (unpacked rootfs)"}


def add_rows(bench: ImageBench, results: Results, sides: list[str]) -> None:
    """Median rows: local baselines first, then each measurement for each client; pairs
    (pycvmfs, cvmfs2) go to `results.pairs`."""
    n = READERS
    d = "page cache dropped" if bench.options.drop else "page cache NOT dropped"
    local: dict[str, str] = {}
    for key, template in LOCAL_ROWS.items():
        if bench.samples.get((key, "local")):
            unit = {"read": "bytes", "ls": "entries"}.get(key, "op")
            local[key] = median_row(results, template.format(n=n, d=d),
                                    bench.samples[(key, "local")], unit).name
    for key, template, unit, base in ROWS:
        made: dict[str, Row] = {}
        for who in sides:
            samples = bench.samples.get((key, who))
            if not samples:
                continue
            note = ""
            if unit == "%":
                mb = sorted(s.amount for s in samples)[(len(samples) - 1) // 2]
                note = f"{mb * bench.image.file_bytes / 100 / MB:.2f} MB"
            made[who] = median_row(results, template.format(n=n, c=who), samples, unit,
                                   baseline=local.get(base) if base else None, note=note)
        if "pycvmfs" in made and "cvmfs2" in made:
            results.reference.add(made["cvmfs2"].name)
            results.pairs.append((made["pycvmfs"], made["cvmfs2"]))


def bench_image(results: Results, options: ImageOptions, url_env: Env, log: AccessLog,
                publish: Callable[[str, Path], object], reference: Reference | None,
                tree: Env | None, many: str | None, tree_cached: bool) -> None:
    """Set up (or reuse) the image repositories, publish them on nginx (`publish`), run the
    rounds and add the rows. `tree` is the tree's pycvmfs Env for the many/ listing, `many`
    its path in the repository; unless `tree_cached`, each client lists it once first to
    cache its catalogs."""
    from tests.images import ensure_images

    images = ensure_images()
    if isinstance(images, str):
        results.notes.append(f"image rows skipped: cannot build the test image: {images}")
        return
    built = images.python
    workdir = options.workdir
    repo = ensure_image_repo(workdir, built.layout, built.manifest_digest, IMAGE_FQRN, None)
    start_set_repo = None
    if start_set_supported():
        start_set_repo = ensure_image_repo(workdir, built.layout, built.manifest_digest,
                                           START_SET_FQRN, START_COMMAND)
        results.notes.extend(f"start-set ingest: {line}" for line in start_set_repo.warnings)
    else:
        results.notes.append("start-set rows skipped: `pycvmfs ingest --help` offers no "
                             "--start-set")
    image = Image.load(built.rootfs, built.config, options.scope)
    scope = f"/{options.scope}: " if options.scope else ""
    results.notes.append(f"image: {image.file_bytes / MB:,.1f} MB; read and listed: {scope}"
                         f"{len(image.files):,} regular files, {image.entries:,} entries; start: "
                         f"{shlex.join(START_COMMAND)}; rounds: {options.rounds} (median), "
                         "interleaved local / pycvmfs / cvmfs2")

    def env_for(r: ImageRepo, name: str) -> Env:
        publish(f"cvmfs/{r.fqrn}", r.base / "storage")
        env = Env(base=r.base, run=url_env.run / name, url=url_env.url,
                  backend=options.backend, quota_mb=int(r.storage_bytes * 1.5 / MIB) + 1024,
                  read_ahead_kb=options.read_ahead_kb, fqrn=r.fqrn)
        for d in (env.mnt, env.run / "etc"):
            d.mkdir(parents=True, exist_ok=True)
        return env

    image_env = env_for(repo, "image")
    set_env = env_for(start_set_repo, "start-set") if start_set_repo else None
    sides = [Side("pycvmfs", lambda: Mount(image_env), image_env.cache,
                  (lambda: Mount(set_env)) if set_env else None,
                  set_env.cache if set_env else None,
                  (lambda: Mount(tree)) if tree else None)]
    if reference is not None:
        ref_image = Reference(reference.binary, reference.dir.parent / "cvmfs2-image")
        ref_image.write_config(image_env)
        ref_set = None
        if set_env is not None:
            ref_set = Reference(reference.binary, reference.dir.parent / "cvmfs2-start-set")
            ref_set.write_config(set_env)
        if tree is not None and not reference.config.exists():
            reference.write_config(tree)
        ra = options.read_ahead_kb
        sides.append(Side(
            "cvmfs2", lambda: Cvmfs2Mount(ref_image, ra), ref_image.cache,
            (lambda: Cvmfs2Mount(ref_set, ra)) if ref_set else None,
            ref_set.cache if ref_set else None,
            (lambda: Cvmfs2Mount(reference, ra)) if tree else None))
    bench = ImageBench(image, repo, log, options, Path(many) if many and tree else None,
                       tree.base / "src" / many if many and tree else None,
                       [r.base / "storage" for r in (repo, start_set_repo) if r is not None])
    bench.warm_storage()
    if bench.many is not None and not tree_cached:  # the catalogs of many/ in the caches
        for side in sides:
            assert side.tree is not None
            with side.tree() as m:
                ls_lr(m.mnt / bench.many)
    for i in range(options.rounds):
        print(f"image round {i + 1}/{options.rounds}:", flush=True)
        bench.local_round()
        bench.progress("local")
        for side in sides:
            bench.client_round(side)
            bench.progress(side.name)
    add_rows(bench, results, [side.name for side in sides])
    if reference is not None and not results.reference_version:
        results.reference_version = ref_image.version
