"""The generated tree of `bench/client.py` and its published repository, cached under the
workdir (keyed by the sizes and seed) so re-runs skip the setup."""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.common import MIB, pycvmfs

FQRN = "bench-client.local"
GEN_PIECE = 16 * MIB


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

