"""The reference's `cvmfs_swissknife pull` as `cvmfs_server snapshot` runs it, shared by the
differential tests and bench/replication.py: the repository skeleton the replica needs
(pull aborts without it) and the arguments; the caller adds `-i` (first snapshot) and
`-p` (catalog history) as it needs."""

from __future__ import annotations

from pathlib import Path


def prepare_replica(replica: Path) -> None:
    """cvmfs_server's repository skeleton: data/00..ff and data/txn."""
    for fanout in range(256):
        (replica / "data" / f"{fanout:02x}").mkdir(parents=True)
    (replica / "data" / "txn").mkdir()


def pull_arguments(fqrn: str, source_url: str, replica: Path, replica_url: str,
                   public_key: Path, reflog_checksum: Path, workers: int) -> list[str]:
    """`pull ...` into the directory `replica`, which is served at `replica_url` (pull
    reads the replica's own reflog there); `reflog_checksum` must be kept between pulls."""
    return ["pull", "-m", fqrn, "-u", source_url, "-w", replica_url,
            "-r", f"local,{replica}/data/txn,{replica}", "-x", f"{replica}/data/txn",
            "-k", str(public_key), "-n", str(workers), "-t", "10", "-a", "3",
            "-R", str(reflog_checksum)]
