"""Image benchmark: `python3 -c pass` from a CernVM-FS mount vs pull + unpack + run, in one run.

What it measures
    Baseline "pull + unpack + run": `skopeo copy docker://REGISTRY/ns/debian:python oci:DIR:tag`
    from a local docker-registry, `umoci unpack --image DIR:tag BUNDLE`, then `python3 -c pass`
    in BUNDLE/rootfs with bubblewrap -- the very invocation `pycvmfs run --runner bwrap` builds
    (`pycvmfs.images.runner.BwrapRunner`, same flags, same environment from the image
    config). Fresh directories every round; the total is the wall time of all three steps.
    "Cold start from the mount": empty client cache, not mounted:
    `python -m pycvmfs run -o ... --runner bwrap FQRN/IMAGE-PATH -- python3 -c pass` (mounts
    in the background first; the mount time is included), then "warm": the same command again
    (mounted, cache filled). The mount is unmounted after each round.
    Bytes: what nginx sent during the cold start (its access log's body bytes), against the
    image's compressed layers (sum of the manifest's layer sizes: what a pull transfers) and
    its unpacked rootfs (sum of regular file sizes).
    Ingest (publisher side), in-process `pycvmfs.images.ingest.ingest([ref], IngestOptions(
    PublishOptions(...)))` from the same registry into a FRESH repository (new working tree
    and storage every round), each step's wall time: "first image" = python into the empty
    repository (download, flat rootfs + layer trees, publish); "second image" = base
    (`tests/images.py`: python's first layer *is* base's layer) into the same repository,
    with the bytes its publish wrote against the first's (file-level dedup); "again,
    unchanged" = python once more (skipped, nothing published). The ratio for these rows is
    "x pull+unpack": seconds / the median `skopeo copy` + `umoci unpack` seconds of the
    baseline rounds (their run step left out; also shown as its own row). "working tree"
    and "storage" after the two ingests: the working tree's bytes (published images and
    layer trees are `.pycvmfs-kept` stubs by then) against both images' unpacked rootfs,
    and the storage's bytes (the repository on disk) against both images' distinct
    compressed layers (what a registry or an OCI layout holds for the two).

    containerd (bench/images_containerd.py, unless `--no-containerd` or containerd is
    missing): "containerd + pycvmfs snapshotter, cold" (mount with an empty cache, then
    `pycvmfs snapshotter pull` + `ctr run --snapshotter pycvmfs`) against "ctr image pull +
    ctr run" (containerd's own snapshotter), and the bytes each fetched.

Fairness
    Both sides are served from memory: the registry's blobs and the repository's storage are
    read before every round so the page cache holds them (nginx serves the repository;
    docker-registry serves the layers). Nothing is dropped from the page cache (other users
    share this machine). Each measurement is repeated `--rounds` times (3), the median is
    shown. "x pull" is seconds / the median pull + unpack + run seconds of the same run.

Targets
    cold start from the mount faster than pull + unpack + run; bytes fetched for the cold
    start <= 10 % of the compressed image; the same two for containerd with the snapshotter
    against `ctr image pull` + `ctr run`.

The registry data, keys and ingested repository are cached under `--workdir`
(default /tmp/pycvmfs-bench-images; `ready.json` marks a finished setup; the image path
names the registry port of the setup run, which is only a name). The test images "python"
(Debian bookworm minbase + python3) and "base" (the minbase alone; pushed to the registry by
every run, which stores its shared layer once) come from `tests/images.py` (built once, cached).
Run from the repository root: `python bench/images.py [--quick]`. Needs root, /dev/fuse,
nginx, docker-registry, skopeo, umoci, bwrap.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import (  # noqa: E402
    MIB,
    AccessLog,
    child_env,
    compile_package,
    tree_bytes,
    warm_files,
)
from bench.images_containerd import containerd_missing, containerd_round  # noqa: E402
from pycvmfs.images.ingest import IngestOptions, IngestResult, ingest  # noqa: E402
from pycvmfs.images.runner import BwrapRunner, RunRequest  # noqa: E402
from pycvmfs.images.singularity import ImageConfig  # noqa: E402
from pycvmfs.publisher.publish import PublishOptions  # noqa: E402
from tests.images import BuiltImage, ensure_images  # noqa: E402
from tests.registry import DockerRegistry, skopeo_copy  # noqa: E402
from tests.servers import Nginx  # noqa: E402

FQRN = "bench-images.local"
TARGET_NAME = "ns/debian:python"
BASE_NAME = "ns/debian:base"  # the second image of the ingest rows
COMMAND = ("python3", "-c", "pass")
TARGET_BYTES_SHARE = 0.10
KIB = 1024
STEP_TIMEOUT_S = 600
TOOLS = ("nginx", "docker-registry", "skopeo", "umoci", "bwrap")


# -- setup ---------------------------------------------------------------------------


class CachedRegistry(DockerRegistry):
    """A docker-registry whose storage lives in `data` (kept across runs)."""

    def __init__(self, data: Path) -> None:
        super().__init__(access_log=True)  # the containerd rows count what it sends
        shutil.rmtree(self.data, ignore_errors=True)
        data.mkdir(parents=True, exist_ok=True)
        self.data = data


@dataclass(frozen=True, slots=True)
class Setup:
    base: Path
    image_path: str  # <registry host>/ns/debian:python, as ingested
    keys_dir: Path
    public_key: Path
    storage: Path
    registry_data: Path


def pycvmfs_env() -> dict[str, str]:
    return child_env(PYCVMFS_CONFIG_ROOT="/nonexistent")


def ensure_setup(workdir: Path, image: BuiltImage) -> Setup:
    """Push the image to a registry kept under WORKDIR and ingest it into a repository,
    once; WORKDIR/<image manifest>/ready.json marks a finished setup."""
    from pycvmfs.images.ingest import IngestOptions, ingest
    from pycvmfs.publisher.keys import create_keys
    from pycvmfs.publisher.publish import PublishOptions

    base = workdir / image.manifest_digest.replace(":", "-")[:23]
    ready = base / "ready.json"
    keys_dir = base / "keys"
    if not ready.exists():
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        for directory in (base, *base.parents):
            if directory == Path("/"):
                break
            directory.chmod(directory.stat().st_mode | 0o005)  # nginx workers (nobody)
        started = time.perf_counter()
        print(f"setup: registry + ingest into {base} ...", flush=True)
        with CachedRegistry(base / "registry") as registry:
            ref = registry.push(image.layout, image.tag, TARGET_NAME)
            keys = create_keys(FQRN, keys_dir)
            result = ingest([ref], IngestOptions(PublishOptions(FQRN, base / "work",
                                                                base / "storage", keys_dir)))
            image_path = result.images[0].public_path
        info = {"image_path": image_path, "public_key": str(keys.public_key),
                "seconds": time.perf_counter() - started}
        ready.write_text(json.dumps(info, indent=1))
        print(f"setup: done in {info['seconds']:.1f} s", flush=True)
    else:
        print(f"setup: reusing {base} (delete it to redo)")
    info = json.loads(ready.read_text())
    return Setup(base, str(info["image_path"]), keys_dir, Path(info["public_key"]),
                 base / "storage", base / "registry")


def manifest_layers(image: BuiltImage) -> list[tuple[str, int]]:
    """The image manifest's layers: (digest, compressed size)."""
    algorithm, digest = image.manifest_digest.split(":", 1)
    manifest = json.loads((image.layout / "blobs" / algorithm / digest).read_bytes())
    return [(str(layer["digest"]), int(layer["size"])) for layer in manifest["layers"]]


def image_sizes(image: BuiltImage) -> tuple[int, int]:
    """(sum of the manifest's compressed layer sizes, unpacked rootfs bytes)."""
    return sum(size for _, size in manifest_layers(image)), tree_bytes(image.rootfs)


# -- measurements --------------------------------------------------------------------


def run_checked(argv: list[str], *, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=STEP_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])} ... failed ({done.returncode}):\n"
                           f"{done.stdout}{done.stderr}")


def pull_unpack_run(registry: DockerRegistry, config: ImageConfig, scratch: Path,
                    runner: BwrapRunner) -> dict[str, float]:
    """One baseline round in fresh directories: seconds of pull, unpack, run and total."""
    layout, bundle = scratch / "oci", scratch / "bundle"
    t0 = time.perf_counter()
    skopeo_copy(f"docker://{registry.host}/{TARGET_NAME}", f"oci:{layout}:python")
    t1 = time.perf_counter()
    run_checked(["umoci", "unpack", "--image", f"{layout}:python", str(bundle)])
    t2 = time.perf_counter()
    invocation = runner.invocation(RunRequest.for_image(bundle / "rootfs", COMMAND, config))
    run_checked(list(invocation.argv), env=dict(invocation.env))
    t3 = time.perf_counter()
    return {"pull": t1 - t0, "unpack": t2 - t1, "run": t3 - t2, "total": t3 - t0}


def ingest_rounds(registry: DockerRegistry, keys_dir: Path,
                  scratch: Path) -> dict[str, float]:
    """One ingest round into a fresh repository below `scratch`: python, then base (shares
    python's first layer), then python again (unchanged). Seconds of each, the bytes each
    publish wrote, the working tree and storage bytes after the first two."""
    work, storage = scratch / "work", scratch / "storage"
    options = IngestOptions(PublishOptions(FQRN, work, storage, keys_dir))

    def timed(name: str) -> tuple[float, IngestResult]:
        t0 = time.perf_counter()
        result = ingest([f"docker://{registry.host}/{name}"], options)
        return time.perf_counter() - t0, result

    first_s, first = timed(TARGET_NAME)
    second_s, second = timed(BASE_NAME)
    if first.published is None or second.published is None:
        raise RuntimeError("ingest into a fresh repository published nothing")
    work_bytes, storage_bytes = tree_bytes(work), tree_bytes(storage)
    again_s, again = timed(TARGET_NAME)
    skipped = again.published is None and all(image.skipped for image in again.images)
    return {"first": first_s, "first_bytes_written": float(first.published.bytes_written),
            "second": second_s, "second_bytes_written": float(second.published.bytes_written),
            "again": again_s, "again_skipped": float(skipped),
            "work_bytes": float(work_bytes), "storage_bytes": float(storage_bytes)}


def unmount(mnt: Path) -> None:
    if not os.path.ismount(mnt):
        return
    subprocess.run([sys.executable, "-m", "pycvmfs", "umount", str(mnt)], cwd=REPO_ROOT,
                   env=pycvmfs_env(), capture_output=True, timeout=60)
    if os.path.ismount(mnt):
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
    if os.path.ismount(mnt):
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def mount_rounds(setup: Setup, server: Nginx, scratch: Path) -> dict[str, float]:
    """One cold + warm round: seconds of each, bytes/requests nginx served for the cold one."""
    cache = scratch / "cache"
    options = ",".join([f"CVMFS_SERVER_URL={server.url}/cvmfs/{FQRN}",
                        "CVMFS_HTTP_PROXY=DIRECT", f"CVMFS_PUBLIC_KEY={setup.public_key}",
                        f"CVMFS_CACHE_BASE={cache}"])
    mnt = cache / "mnt" / FQRN  # --mount: kept mounted for the warm run
    argv = [sys.executable, "-m", "pycvmfs", "run", "-o", options, "--runner", "bwrap",
            "--mount", str(mnt), f"{FQRN}/{setup.image_path}", "--", *COMMAND]
    log = AccessLog(server.run / "access.log")
    env = pycvmfs_env()
    try:
        t0 = time.perf_counter()
        run_checked(argv, env=env)
        cold = time.perf_counter() - t0
        fetched, requests = log.take()
        rx_kib = -1.0
        with suppress(OSError, ValueError):
            rx_kib = float(os.getxattr(mnt, "user.rx").decode())
        t0 = time.perf_counter()
        run_checked(argv, env=env)
        warm = time.perf_counter() - t0
        warm_bytes, _ = log.take()
    finally:
        unmount(mnt)
    return {"cold": cold, "warm": warm, "bytes": float(fetched), "requests": float(requests),
            "rx_kib": rx_kib, "cache_bytes": float(tree_bytes(cache)),
            "warm_bytes": float(warm_bytes)}


# -- the run -------------------------------------------------------------------------


@dataclass(slots=True)
class Row:
    name: str
    seconds: float | None
    x_pull: float | None = None
    value: str = ""
    target: str = ""
    passed: bool | None = None
    samples: list[float] = field(default_factory=list)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def print_table(rows: list[Row]) -> None:
    print()
    print(f"{'measurement':<44} {'seconds':>8} {'x pull':>7}  {'value':<26} "
          f"{'target':<22} result")
    print("-" * 118)
    for r in rows:
        sec = f"{r.seconds:8.3f}" if r.seconds is not None else " " * 8
        xp = f"{r.x_pull:7.2f}" if r.x_pull is not None else " " * 7
        result = "" if r.passed is None else ("PASS" if r.passed else "FAIL")
        print(f"{r.name:<44} {sec} {xp}  {r.value:<26} {r.target:<22} {result}".rstrip())


def containerd_rows(runtimes: list[dict[str, float]], missing: str | None,
                    layers_bytes: int) -> list[Row]:
    """containerd with the pycvmfs snapshotter vs `ctr image pull` + `ctr run`."""
    if missing is not None or not runtimes:
        return [Row("containerd rows", None, value=f"skipped: {missing}")]
    plain = median([r["ctr_seconds"] for r in runtimes])
    lazy = median([r["snap_seconds"] for r in runtimes])
    ctr_bytes = median([r["ctr_bytes"] for r in runtimes])
    lazy_bytes = median([r["snap_registry_bytes"] + r["snap_repository_bytes"]
                         for r in runtimes])
    return [
        Row("ctr image pull + ctr run (containerd)", plain,
            samples=[r["ctr_seconds"] for r in runtimes]),
        Row("containerd + pycvmfs snapshotter, cold", lazy,
            value=f"{lazy / plain:.2f} x ctr pull+run" if plain > 0 else "",
            target="< ctr pull+run", passed=lazy < plain,
            samples=[r["snap_seconds"] for r in runtimes]),
        Row("  of which the mount (empty cache)", median(
            [r["snap_mount_seconds"] for r in runtimes])),
        Row("  bytes fetched: ctr image pull", None,
            value=f"{ctr_bytes / KIB:,.0f} KiB = {100 * ctr_bytes / layers_bytes:.0f} %"),
        Row("  bytes fetched: snapshotter (registry+repo)", None,
            value=f"{lazy_bytes / KIB:,.0f} KiB = {100 * lazy_bytes / layers_bytes:.1f} %",
            target="<= 10 % of layers",
            passed=lazy_bytes <= TARGET_BYTES_SHARE * layers_bytes),
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/pycvmfs-bench-images"))
    parser.add_argument("--rounds", type=int, default=3, help="repeats; median shown [3]")
    parser.add_argument("--quick", action="store_true", help="one round")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--no-containerd", dest="containerd", action="store_false",
                        help="leave out the containerd rows")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 1
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    return args


def preflight() -> str | None:
    if os.geteuid() != 0:
        return "needs root (FUSE mounts, umoci unpack with owners)"
    if not os.path.exists("/dev/fuse"):
        return "needs /dev/fuse"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    return f"missing tools: {', '.join(missing)}" if missing else None


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks


@contextmanager
def scratch_dir(path: Path) -> Iterator[Path]:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = preflight()
    if problem is not None:
        print(f"bench/images.py: {problem}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    compile_package()
    images = ensure_images()
    if isinstance(images, str):
        print(f"bench/images.py: cannot build the test images: {images}", file=sys.stderr)
        return 2
    image, base_image = images.python, images.base
    workdir: Path = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    setup = ensure_setup(workdir, image)
    layers_bytes, rootfs_bytes = image_sizes(image)
    base_layers_bytes, base_rootfs_bytes = image_sizes(base_image)
    distinct_layers_bytes = sum(dict([*manifest_layers(image),
                                      *manifest_layers(base_image)]).values())
    config = ImageConfig.from_oci(image.config)
    bwrap = shutil.which("bwrap")
    assert bwrap is not None
    runner = BwrapRunner(bwrap, new_session=True)  # as `pycvmfs run` with stdin not a tty

    base: list[dict[str, float]] = []
    mounts: list[dict[str, float]] = []
    ingests: list[dict[str, float]] = []
    runtimes: list[dict[str, float]] = []
    no_containerd = containerd_missing() if args.containerd else "--no-containerd"
    with CachedRegistry(setup.registry_data) as registry, Nginx() as server, \
            scratch_dir(workdir / f"run-{os.getpid()}") as run_dir:
        server.publish(f"cvmfs/{FQRN}", setup.storage)
        registry.push(base_image.layout, base_image.tag, BASE_NAME)  # its layer is there
        for i in range(args.rounds):
            warm_files(setup.registry_data)
            with scratch_dir(run_dir / f"pull-{i}") as scratch:
                base.append(pull_unpack_run(registry, config, scratch, runner))
            warm_files(setup.storage)
            with scratch_dir(run_dir / f"mount-{i}") as scratch:
                mounts.append(mount_rounds(setup, server, scratch))
            warm_files(setup.registry_data)
            with scratch_dir(run_dir / f"ingest-{i}") as scratch:
                ingests.append(ingest_rounds(registry, setup.keys_dir, scratch))
            if no_containerd is None:
                with scratch_dir(run_dir / f"containerd-{i}") as scratch:
                    runtimes.append(containerd_round(
                        FQRN, setup.public_key, f"{registry.host}/{TARGET_NAME}", registry,
                        server, scratch))
            print(f"round {i + 1}/{args.rounds}: pull+unpack+run "
                  f"{base[-1]['total']:.2f} s, cold {mounts[-1]['cold']:.2f} s, warm "
                  f"{mounts[-1]['warm']:.2f} s, fetched {mounts[-1]['bytes'] / KIB:.0f} KiB, "
                  f"ingest {ingests[-1]['first']:.2f} + {ingests[-1]['second']:.2f} + "
                  f"{ingests[-1]['again']:.2f} s", flush=True)

    pull_total = median([b["total"] for b in base])
    rows: list[Row] = []

    def add(name: str, samples: list[float], **kw: Any) -> Row:
        sec = median(samples)
        row = Row(name, sec, sec / pull_total if pull_total > 0 else None,
                  samples=samples, **kw)
        rows.append(row)
        return row

    add("pull: skopeo copy (registry -> oci dir)", [b["pull"] for b in base])
    add("unpack: umoci unpack", [b["unpack"] for b in base])
    add("run: bwrap python3 -c pass (local rootfs)", [b["run"] for b in base])
    add("pull + unpack + run (baseline)", [b["total"] for b in base])
    cold = median([m["cold"] for m in mounts])
    add("pycvmfs run, cold (mount + empty cache)", [m["cold"] for m in mounts],
        target="< pull+unpack+run", passed=cold < pull_total)
    add("pycvmfs run, warm (mounted, cache filled)", [m["warm"] for m in mounts])
    fetched = median([m["bytes"] for m in mounts])
    share = fetched / layers_bytes
    rows.append(Row("bytes fetched, cold start (nginx log)", None,
                    value=f"{fetched / KIB:,.0f} KiB = {100 * share:.1f} %",
                    target="<= 10 % of layers", passed=share <= TARGET_BYTES_SHARE,
                    samples=[m["bytes"] for m in mounts]))
    rows.append(Row("  of unpacked rootfs", None,
                    value=f"{100 * fetched / rootfs_bytes:.1f} % of {rootfs_bytes / MIB:.1f} MiB"))
    rows.append(Row("  image: compressed layers (manifest)", None,
                    value=f"{layers_bytes / KIB:,.0f} KiB"))
    rows.append(Row("  requests, cold start", None,
                    value=f"{median([m['requests'] for m in mounts]):.0f}"))
    rows.append(Row("  client cache after cold + warm", None,
                    value=f"{median([m['cache_bytes'] for m in mounts]) / KIB:,.0f} KiB"))
    rx = median([m["rx_kib"] for m in mounts])
    if rx >= 0:
        rows.append(Row("  user.rx of the mount root (info)", None, value=f"{rx:,.0f} KiB"))
    rows.append(Row("  bytes fetched by the warm run", None,
                    value=f"{median([m['warm_bytes'] for m in mounts]) / KIB:,.0f} KiB"))

    pull_unpack = median([b["pull"] + b["unpack"] for b in base])

    def x_pull_unpack(samples: list[float]) -> str:
        return f"{median(samples) / pull_unpack:.2f} x pull+unpack" if pull_unpack > 0 else ""

    def percent(part: float, whole: float) -> str:
        share = 100 * part / whole if whole > 0 else 0.0
        return f"{share:.1f} %" if share >= 1 else f"{share:.2g} %"  # tiny shares: 2 digits

    add("pull + unpack (skopeo + umoci, no run)", [b["pull"] + b["unpack"] for b in base])
    first = [g["first"] for g in ingests]
    add("ingest, first image (python, fresh repo)", first, value=x_pull_unpack(first))
    first_written = median([g["first_bytes_written"] for g in ingests])
    rows.append(Row("  bytes written by its publish", None,
                    value=f"{first_written / KIB:,.0f} KiB",
                    samples=[g["first_bytes_written"] for g in ingests]))
    second = [g["second"] for g in ingests]
    add("ingest, second image sharing layers (base)", second, value=x_pull_unpack(second))
    second_written = median([g["second_bytes_written"] for g in ingests])
    rows.append(Row("  bytes written vs the first ingest's", None,
                    value=f"{second_written / KIB:,.1f} KiB = "
                          f"{percent(second_written, first_written)}",
                    samples=[g["second_bytes_written"] for g in ingests]))
    again = [g["again"] for g in ingests]
    add("ingest again, unchanged (python)", again,
        value="skipped, no publish" if all(g["again_skipped"] for g in ingests)
        else "NOT skipped")
    both_rootfs = rootfs_bytes + base_rootfs_bytes
    work_bytes = median([g["work_bytes"] for g in ingests])
    rows.append(Row("working tree after both ingests", None,
                    value=f"{work_bytes / KIB:,.1f} KiB = {percent(work_bytes, both_rootfs)}",
                    samples=[g["work_bytes"] for g in ingests]))
    rows.append(Row("  both images' unpacked rootfs", None,
                    value=f"{both_rootfs / KIB:,.0f} KiB"))
    storage_bytes = median([g["storage_bytes"] for g in ingests])
    rows.append(Row("storage after both ingests", None,
                    value=f"{storage_bytes / KIB:,.0f} KiB = "
                          f"{percent(storage_bytes, distinct_layers_bytes)}",
                    samples=[g["storage_bytes"] for g in ingests]))
    rows.append(Row("  both images' compressed layers (distinct)", None,
                    value=f"{distinct_layers_bytes / KIB:,.0f} KiB"))

    rows += containerd_rows(runtimes, no_containerd, layers_bytes)
    print(f"\nimage: {image.tag} (Debian bookworm minbase + python3), {len(image.layer_digests)} "
          f"layers; command: {' '.join(COMMAND)}; rounds: {args.rounds} (median); "
          "x pull = seconds / pull+unpack+run seconds; x pull+unpack = seconds / skopeo copy + "
          "umoci unpack seconds; ingest: into a fresh repository each round, then base, then "
          "python again; working tree and storage after python + base")
    print_table(rows)
    judged = [r for r in rows if r.passed is not None]
    met = sum(1 for r in judged if r.passed)
    print(f"\ntargets met: {met}/{len(judged)}")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "rounds": args.rounds, "image_layers_bytes": layers_bytes,
            "image_rootfs_bytes": rootfs_bytes, "baseline": base, "mount": mounts,
            "base_image_layers_bytes": base_layers_bytes,
            "base_image_rootfs_bytes": base_rootfs_bytes,
            "distinct_layers_bytes": distinct_layers_bytes, "ingest": ingests,
            "containerd": runtimes,
            "rows": [{"name": r.name, "seconds": r.seconds, "x_pull": r.x_pull,
                      "value": r.value, "target": r.target, "passed": r.passed,
                      "samples": r.samples} for r in rows]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
