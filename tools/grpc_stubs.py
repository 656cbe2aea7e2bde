"""Compile containerd's API (snapshots, content, images, leases) into the descriptor set
pycvmfs/snapshotter/api.py loads.

    python tools/grpc_stubs.py [OUTPUT]   (default: pycvmfs/snapshotter/containerd_api.binpb)

The `.proto` files are containerd's own, never copied into this repository. They come from
Debian's `golang-github-containerd-containerd-dev` (containerd's API definitions under
/usr/share/gocode/src/github.com/containerd/containerd/api, the same containerd release as
Debian's `containerd`) and `golang-github-gogo-protobuf-dev` (`gogoproto/gogo.proto`, which
those files import): the installed packages when they are, otherwise the two packages
fetched with `apt-get download` (signed by Debian's archive keys, as any apt download) and
unpacked under build/containerd-api. grpcio-tools' protoc, run in this process, writes one
FileDescriptorSet with every import included; pycvmfs/snapshotter/api.py builds the message
classes from it at run time, so no generated Python is committed or imported.

Exit status 0 when the set is written (or already newer than its sources), 1 with one line
naming the cause when it cannot be (no apt-get, no network, no grpcio-tools): the
snapshotter's tests are then skipped.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "pycvmfs" / "snapshotter" / "containerd_api.binpb"
WORK = ROOT / "build" / "containerd-api"
PACKAGES = ("golang-github-containerd-containerd-dev", "golang-github-gogo-protobuf-dev")
GOCODE = Path("usr/share/gocode/src")
API = "github.com/containerd/containerd/api/services"
SNAPSHOTS_PROTO = f"{API}/snapshots/v1/snapshots.proto"
# the snapshotter serves the first; a client registering images in containerd uses the rest
PROTOS = (SNAPSHOTS_PROTO, f"{API}/content/v1/content.proto", f"{API}/images/v1/images.proto",
          f"{API}/leases/v1/leases.proto", f"{API}/diff/v1/diff.proto")
GOGO_ROOT = "github.com/gogo/protobuf"  # containerd imports "gogoproto/gogo.proto" from here
GOGO_PROTO = f"{GOGO_ROOT}/gogoproto/gogo.proto"


class StubError(Exception):
    """Why the descriptor set cannot be made (one line)."""


def _has_protos(src: Path) -> bool:
    return (src / SNAPSHOTS_PROTO).is_file() and (src / GOGO_PROTO).is_file()


def proto_root() -> Path:
    """A directory holding containerd's and gogo's .proto files (see the module docstring)."""
    system = Path("/") / GOCODE
    if _has_protos(system):
        return system
    unpacked = WORK / "root"
    if _has_protos(unpacked / GOCODE):
        return unpacked / GOCODE
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise StubError("containerd's API definitions need apt-get and dpkg-deb (Debian's "
                        f"{' and '.join(PACKAGES)}); install those packages or run on Debian")
    debs = WORK / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["apt-get", "download", *PACKAGES], cwd=debs, capture_output=True,
                          text=True, check=False, timeout=300)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise StubError(f"apt-get download {' '.join(PACKAGES)} failed: {last}")
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True, timeout=120)
    if not _has_protos(unpacked / GOCODE):
        raise StubError(f"the packages in {debs} do not hold {SNAPSHOTS_PROTO} and {GOGO_PROTO}")
    return unpacked / GOCODE


def compile_set(source: Path, output: Path) -> None:
    """protoc (grpcio-tools, in this process) -> a FileDescriptorSet with its imports."""
    try:
        from grpc_tools import protoc
    except ImportError as exc:
        raise StubError("grpcio-tools is not installed (pip install -e '.[test]')") from exc
    import importlib.resources

    well_known = importlib.resources.files("grpc_tools") / "_proto"
    output.parent.mkdir(parents=True, exist_ok=True)
    status = protoc.main(["protoc", f"-I{source}", f"-I{source / GOGO_ROOT}",
                          f"-I{well_known}", "--include_imports",
                          f"--descriptor_set_out={output}", *PROTOS])
    if status != 0:
        raise StubError(f"protoc could not compile containerd's API in {source} "
                        f"(status {status})")


def main(argv: list[str]) -> int:
    output = Path(argv[0]) if argv else DEFAULT_OUTPUT
    try:
        source = proto_root()
        if output.is_file() and output.stat().st_mtime >= max(
                (source / name).stat().st_mtime for name in PROTOS) and output.stat(
                ).st_mtime >= Path(__file__).stat().st_mtime:
            return 0
        compile_set(source, output)
    except (StubError, OSError, subprocess.SubprocessError) as exc:
        print(f"grpc_stubs: {exc}", file=sys.stderr)
        return 1
    print(f"grpc_stubs: {output.relative_to(ROOT) if output.is_relative_to(ROOT) else output} "
          f"from {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
