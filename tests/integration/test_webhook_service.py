"""The webhook service over a real socket and as a process: the token, queueing (acknowledged
= on disk), the queue surviving a killed process, `webhook serve` refusing to start without
registries or on a port in use (one line, no traceback) and stopping on SIGINT.
(Moved here from tests/unit: they open sockets and start processes.)"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pycvmfs.errors import ConfigError
from pycvmfs.images.ingest import IngestOptions
from pycvmfs.images.webhook import WebhookService
from pycvmfs.images.webhook_options import WebhookOptions
from pycvmfs.images.webhook_payload import DOCKER_EVENTS_TYPE, ImageEvent
from pycvmfs.images.webhook_queue import EventQueue
from pycvmfs.images.webhook_registries import RegistryAllowlist
from pycvmfs.publisher.publish import PublishOptions
from tests.publish_helpers import Keys
from tests.servers import free_port

ROOT = Path(__file__).parents[2]
DIGEST = "sha256:" + "a" * 64
BLOB = "sha256:" + "b" * 64
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REGISTRY = "127.0.0.1:5000"


def _docker_event(media_type: str, *, tag: str | None = "t", digest: str = DIGEST,
                  host: str = REGISTRY) -> dict[str, object]:
    target: dict[str, object] = {"mediaType": media_type, "digest": digest,
                                 "repository": "ns/debian"}
    if tag is not None:
        target["tag"] = tag
    return {"action": "push", "target": target, "request": {"host": host}}


def _envelope(*events: dict[str, object]) -> bytes:
    return json.dumps({"events": list(events)}).encode()


def _post(url: str, body: bytes, token: str | None) -> tuple[int, dict[str, object]]:
    headers = {"Content-Type": DOCKER_EVENTS_TYPE}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def _options(tmp_path: Path, token: str = "s3cret") -> WebhookOptions:
    ingest = IngestOptions(PublishOptions("r.org", tmp_path / "work", tmp_path / "storage",
                                          tmp_path / "keys"))
    return WebhookOptions(ingest, token, tmp_path / "q.sqlite",
                          registries=RegistryAllowlist.build([f"http://{REGISTRY}"]))


def test_http_front_token_and_queueing(tmp_path: Path) -> None:
    release = threading.Event()

    def slow_process(event: ImageEvent, options: WebhookOptions) -> str:
        release.wait(10)
        return "ok"

    body = _envelope(_docker_event("application/octet-stream", tag=None, digest=BLOB),
                     _docker_event(OCI_MANIFEST, tag="v1"))
    with WebhookService(("127.0.0.1", 0), _options(tmp_path), handle=slow_process) as service:
        url = f"http://127.0.0.1:{service.address[1]}/events"
        assert _post(url, body, None)[0] == 401
        assert _post(url, body, "wrong")[0] == 401
        assert _post(url, body, "s3cret-and-more")[0] == 401
        status, answer = _post(url, body, "s3cret")
        assert status == 200 and len(answer["queued"]) == 1  # type: ignore[arg-type]
        assert _post(url, b"{", "s3cret")[0] == 400
        with urllib.request.urlopen(f"http://127.0.0.1:{service.address[1]}/healthz",
                                    timeout=10) as response:
            assert json.loads(response.read())["queue"]["pending"] >= 1
        # acknowledged = on disk, even while the worker has not finished with it
        other = EventQueue(tmp_path / "q.sqlite")
        assert len(other.pending()) >= 1
        other.close()
        release.set()
    queue = EventQueue(tmp_path / "q.sqlite")
    assert queue.counts().get("done", 0) >= 1
    queue.close()


def test_a_port_in_use_is_a_config_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            WebhookService(("127.0.0.1", port), _options(tmp_path))
    queue = EventQueue(tmp_path / "q.sqlite")  # closed again: reopens fine
    queue.close()


def test_queue_survives_a_killed_process(tmp_path: Path) -> None:
    """A child queues events and dies with os._exit (no cleanup, no close); the events
    it acknowledged are there afterwards, in order."""
    path = tmp_path / "q.sqlite"
    script = f"""
import os, sys
from pycvmfs.images.webhook_payload import ImageEvent
from pycvmfs.images.webhook_queue import EventQueue
queue = EventQueue({str(path)!r})
for tag in ("1", "2", "3"):
    queue.put([ImageEvent("push", "h.org", "ns/x", tag)])
sys.stdout.write("acknowledged\\n"); sys.stdout.flush()
os._exit(9)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    assert result.returncode == 9 and result.stdout == "acknowledged\n", result.stderr
    queue = EventQueue(path)
    assert [item.event.tag for item in queue.pending()] == ["1", "2", "3"]
    queue.close()


def _serve_args(tmp_path: Path, keys: Keys, port: int, *extra: str) -> list[str]:
    script = ("import sys\nfrom pycvmfs.cli.images_admin import webhook_group\n"
              "raise SystemExit(webhook_group(sys.argv[1:], standalone_mode=False))\n")
    return [sys.executable, "-c", script, "serve", "--listen", f"127.0.0.1:{port}",
            "--token", "tok", "--queue", str(tmp_path / "queue.sqlite"), "--repo", keys.fqrn,
            "--storage", str(tmp_path / "storage"), "--keys-dir", str(keys.keys_dir), *extra]


@pytest.mark.parametrize(("extra", "message"), [
    ((), "--registry-url URL"),
    (("--registry-url", "ftp://x.org"), "scheme 'ftp'"),
    (("--registry-url", "https://a.org", "--registry-url", "a.org=http://b.org"), "twice"),
    (("--wishlist", "WISHLIST"), "field 'cvmfs_repo' is 'other.org'"),
])
def test_cli_webhook_serve_refuses_bad_registries(tmp_path: Path, keys: Keys,
                                                  extra: tuple[str, ...], message: str) -> None:
    """One line naming the problem, no traceback, before anything listens."""
    wishlist = tmp_path / "wishlist.yaml"
    wishlist.write_text("version: 1\ncvmfs_repo: other.org\ninput:\n  - 'ghcr.io/a/b:1'\n")
    extra = tuple(str(wishlist) if arg == "WISHLIST" else arg for arg in extra)
    args = _serve_args(tmp_path, keys, free_port(), *extra)[3:]
    result = subprocess.run([sys.executable, "-m", "pycvmfs.cli.main", "webhook", *args],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_cli_webhook_serve_queues_and_stops_on_sigint(tmp_path: Path, keys: Keys) -> None:
    """`webhook serve` in its own process: 401 without the token, 200 with it, the event is
    on disk; an event for an unconfigured registry is ignored; the item fails (nothing
    listens there) without a retry; SIGINT ends the service."""
    port = free_port()
    args = _serve_args(tmp_path, keys, port, "--registry-url", "http://127.0.0.1:1",
                       "--retry-seconds", "600", "--max-attempts", "1")
    with subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as process:
        try:
            deadline = time.monotonic() + 30
            url = f"http://127.0.0.1:{port}/"
            while time.monotonic() < deadline:
                try:
                    if _post(url, b"{}", None)[0] == 401:
                        break
                except OSError:
                    time.sleep(0.05)
            body = _envelope(_docker_event(OCI_MANIFEST, host="127.0.0.1:1"),
                             _docker_event(OCI_MANIFEST, host="127.0.0.1:2"))
            status, answer = _post(url, body, "tok")
            assert status == 200 and answer["queued"] == [1]
            assert len(answer["ignored"]) == 1  # type: ignore[arg-type]
            deadline = time.monotonic() + 30  # the worker takes the item (or it stays
            while time.monotonic() < deadline:  # pending on disk: the queue is durable)
                watcher = EventQueue(tmp_path / "queue.sqlite")
                done = watcher.state(1)
                watcher.close()
                if done is not None and done[0] == "failed":
                    break
                time.sleep(0.1)
        finally:
            process.send_signal(signal.SIGINT)
            _out, err = process.communicate(timeout=30)
    assert "listening on 127.0.0.1" in err and "stopped" in err
    assert process.returncode == 130  # interrupted, as every command
    assert "127.0.0.1:2" in err and "not configured" in err  # the ignored event is logged
    queue = EventQueue(tmp_path / "queue.sqlite")  # nothing listens on 127.0.0.1:1
    state = queue.state(1)  # (the worker finishes its item before the process ends)
    assert state is not None and state[0] == "failed" and "127.0.0.1:1" in (state[1] or "")
    queue.close()
