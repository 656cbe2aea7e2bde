"""A real Docker registry (Debian's `docker-registry`, distribution 2.8) on a free loopback
port for integration tests, and helpers that build tiny images with umoci and push them
with skopeo (the recipes of `shared/docs/machine-notes.md`).

`DockerRegistry` writes its own configuration (Debian's default one enables htpasswd) and
data directory into a fresh temporary directory, starts `docker-registry serve CONF` with
`subprocess.Popen`, waits until the port answers, and on exit terminates exactly the
process it started. With `users={"name": "password"}` it requires HTTP Basic auth from an
htpasswd file (bcrypt lines from the Python `bcrypt` package, else `htpasswd -B`;
`htpasswd_line` returns None when neither exists, and the caller skips).

    with DockerRegistry() as registry:
        layout = build_oci_image(tmp / "layout", "t", rootfs)
        registry.push(layout, "t", "ns/name:t")                 # OCI media types
        registry.push(layout, "t", "ns/name:v2", v2s2=True)     # Docker schema 2
        ref = f"docker://{registry.host}/ns/name:t"
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import tempfile
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from tests.servers import ServerContext, free_port, stop_process, wait_for_port

REGISTRY_START_TIMEOUT_SECONDS = 10.0  # measured ready time is ~0.2 s
REGISTRY_STOP_TIMEOUT_SECONDS = 5.0
START_ATTEMPTS = 3  # a free port can be taken between probing and the registry binding it
TOOL_TIMEOUT_SECONDS = 60.0

_CONFIG = """\
version: 0.1
log:
  level: error
  accesslog: {{ disabled: {no_access_log} }}
storage:
  filesystem: {{ rootdirectory: {data} }}
  delete: {{ enabled: true }}
http:
  addr: 127.0.0.1:{port}
{auth}{notifications}"""
_AUTH = """\
auth:
  htpasswd:
    realm: pycvmfs-test
    path: {htpasswd}
"""
_NOTIFICATIONS = """\
notifications:
  endpoints:
    - name: pycvmfs-test
      url: {url}
      headers: {{ Authorization: [{authorization}] }}
      timeout: 2s
      threshold: 5
      backoff: 1s
"""


def missing_tools(*tools: str) -> list[str]:
    return [tool for tool in tools if shutil.which(tool) is None]


def needs_tools(*tools: str) -> pytest.MarkDecorator:
    """skipif marker for tests that run these programs."""
    missing = missing_tools(*tools)
    return pytest.mark.skipif(bool(missing), reason=f"not installed: {', '.join(missing)}")


NEEDS_REGISTRY_TOOLS = needs_tools("docker-registry", "skopeo", "umoci")


def htpasswd_line(user: str, password: str) -> str | None:
    """`user:<bcrypt hash>` (the only hash distribution accepts), or None if nothing here
    can make one."""
    try:
        import bcrypt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        pass
    else:
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5))
        return f"{user}:{hashed.decode()}"
    if shutil.which("htpasswd") is None:
        return None
    result = subprocess.run(["htpasswd", "-nbB", "-C", "5", user, password], check=True,
                            capture_output=True, text=True, timeout=TOOL_TIMEOUT_SECONDS)
    return result.stdout.strip()


def run_tool(args: Sequence[str | Path]) -> str:
    """Run umoci/skopeo; fail with its stderr."""
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                            timeout=TOOL_TIMEOUT_SECONDS, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed ({result.returncode}): "
                           f"{result.stderr.strip()}")
    return result.stdout


def build_oci_image(layout: Path, tag: str, rootfs: Path, *, cmd: str = "/bin/sh",
                    env: Sequence[str] = (), architecture: str | None = None,
                    entrypoint: str | None = None) -> Path:
    """Create (or add `tag` to) the OCI layout `layout` holding one layer made of `rootfs`."""
    if not (layout / "oci-layout").exists():
        run_tool(["umoci", "init", "--layout", layout])
    image = f"{layout}:{tag}"
    run_tool(["umoci", "new", "--image", image])
    run_tool(["umoci", "insert", "--image", image, rootfs, "/"])
    config = ["umoci", "config", "--image", image, "--config.cmd", cmd]
    for variable in env:
        config += ["--config.env", variable]
    if architecture is not None:
        config += ["--architecture", architecture]
    if entrypoint is not None:
        config += ["--config.entrypoint", entrypoint]
    run_tool(config)
    return layout


def skopeo_copy(source: str, dest: str, *, v2s2: bool = False, all_images: bool = False,
                creds: tuple[str, str] | None = None) -> None:
    """`skopeo copy` without TLS (the registry is plain http on loopback); `creds` for
    whichever side is the registry; `all_images` copies every platform of an index."""
    args = ["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false",
            "--dest-tls-verify=false"]
    if v2s2:
        args += ["--format", "v2s2"]
    if all_images:
        args += ["--all"]
    if creds is not None:
        side = "--dest-creds" if dest.startswith("docker://") else "--src-creds"
        args += [side, f"{creds[0]}:{creds[1]}"]
    run_tool([*args, source, dest])


class DockerRegistry(ServerContext):
    """One `docker-registry serve` process on 127.0.0.1:`self.port`."""

    def __init__(self, users: Mapping[str, str] | None = None, *,
                 notify_url: str | None = None, notify_token: str | None = None,
                 access_log: bool = False) -> None:
        """`notify_url`: the registry POSTs its notification envelopes there (with
        `Authorization: Bearer notify_token` when given); `access_log`: requests are
        logged to `log()`."""
        binary = shutil.which("docker-registry")
        if binary is None:
            raise RuntimeError("docker-registry is not installed")
        self.binary = binary
        self.users = dict(users or {})
        self.notify_url = notify_url
        self.notify_token = notify_token
        self.access_log = access_log
        self.base = Path(tempfile.mkdtemp(prefix="pycvmfs-registry-"))
        self.data = self.base / "data"
        self.data.mkdir()
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`, the registry part of image references."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def _write_config(self) -> Path:
        auth = ""
        if self.users:
            lines = []
            for user, password in self.users.items():
                line = htpasswd_line(user, password)
                if line is None:
                    raise RuntimeError("neither python bcrypt nor htpasswd is available")
                lines.append(line)
            htpasswd = self.base / "htpasswd"
            htpasswd.write_text("\n".join(lines) + "\n")
            auth = _AUTH.format(htpasswd=htpasswd)
        config = self.base / "config.yml"
        notifications = ""
        if self.notify_url is not None:
            authorization = f"Bearer {self.notify_token}" if self.notify_token else ""
            notifications = _NOTIFICATIONS.format(url=json.dumps(self.notify_url),
                                                  authorization=json.dumps(authorization))
        config.write_text(_CONFIG.format(data=self.data, port=self.port, auth=auth,
                                         notifications=notifications,
                                         no_access_log=str(not self.access_log).lower()))
        return config

    def start(self) -> None:
        for _ in range(START_ATTEMPTS):
            self.port = free_port()
            config = self._write_config()
            with open(self.base / "registry.log", "ab") as log:
                self.process = subprocess.Popen(
                    [self.binary, "serve", str(config)], stdin=subprocess.DEVNULL,
                    stdout=log, stderr=log)
            if wait_for_port(self.port, REGISTRY_START_TIMEOUT_SECONDS, self.process):
                return
            self._terminate()
        raise RuntimeError(f"docker-registry did not start: {self.log()}")

    def log(self) -> str:
        log = self.base / "registry.log"
        return log.read_text(errors="replace") if log.exists() else "(no log)"

    def _terminate(self) -> None:
        process, self.process = self.process, None
        stop_process(process, signal.SIGTERM, REGISTRY_STOP_TIMEOUT_SECONDS)

    def stop(self) -> None:
        self._terminate()
        shutil.rmtree(self.base, ignore_errors=True)

    def blob_file(self, digest: str) -> Path:
        """Where the filesystem driver keeps a blob (to corrupt it in tamper tests)."""
        algorithm, hex_digest = digest.split(":", 1)
        return (self.data / "docker/registry/v2/blobs" / algorithm / hex_digest[:2] /
                hex_digest / "data")

    def push(self, layout: Path, tag: str, target: str, *, v2s2: bool = False) -> str:
        """Copy `oci:layout:tag` to `docker://HOST/target`; returns that reference."""
        reference = f"docker://{self.host}/{target}"
        creds = next(iter(self.users.items())) if self.users else None
        skopeo_copy(f"oci:{layout}:{tag}", reference, v2s2=v2s2, creds=creds)
        return reference

    def put_manifest(self, repository: str, reference: str, body: bytes,
                     media_type: str) -> None:
        """PUT a manifest or index through the API (multi-arch indexes)."""
        request = urllib.request.Request(
            f"{self.url}/v2/{repository}/manifests/{reference}", data=body, method="PUT",
            headers={"Content-Type": media_type})
        with urllib.request.urlopen(request, timeout=10) as response:
            if response.status != 201:
                raise RuntimeError(f"PUT manifest: HTTP {response.status}")

    def manifest_bytes(self, repository: str, reference: str, media_type: str) -> bytes:
        request = urllib.request.Request(
            f"{self.url}/v2/{repository}/manifests/{reference}", headers={"Accept": media_type})
        with urllib.request.urlopen(request, timeout=10) as response:
            body: bytes = response.read()
            return body


def oci_index(entries: Sequence[tuple[bytes, str, str]]) -> bytes:
    """An OCI image index over (manifest bytes, media type, os/arch[/variant]) entries."""
    manifests = []
    for raw, media_type, platform in entries:
        os_name, arch, *variant = platform.split("/")
        spec: dict[str, str] = {"os": os_name, "architecture": arch}
        if variant:
            spec["variant"] = variant[0]
        manifests.append({"mediaType": media_type, "size": len(raw),
                          "digest": "sha256:" + hashlib.sha256(raw).hexdigest(),
                          "platform": spec})
    return json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": manifests}).encode()
