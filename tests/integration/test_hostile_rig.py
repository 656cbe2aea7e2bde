"""The hostile HTTP rig bounds itself: every endless response ends at its time or byte cap,
when the client goes away, and when the server stops."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.hostile_http import HostileServer, Served
from tests.waiting import wait_until

FQRN = "rig.example.org"


def start_request(server: HostileServer, attack: str, path: str = ".cvmfspublished"
                  ) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    target = server.url(attack).split(str(server.port), 1)[1]
    client.sendall(f"GET {target}/{path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return client


def only_record(server: HostileServer) -> Served:
    assert server.wait_idle(10)
    (served,) = server.served
    return served


def repo(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / ".cvmfspublished").write_bytes(b"manifest\n")
    return {FQRN: tmp_path}


def test_time_cap_ends_a_response_the_client_stopped_reading(tmp_path: Path) -> None:
    with HostileServer(repo(tmp_path), max_seconds=1.5) as server:
        client = start_request(server, "endless")
        client.recv(65536)
        start = time.monotonic()
        served = only_record(server)  # the client reads nothing more, but stays connected
        assert served.ended == "capped" and time.monotonic() - start < 4.0
        client.close()


def test_byte_cap_ends_an_endless_body(tmp_path: Path) -> None:
    with HostileServer(repo(tmp_path), max_bytes=4 << 20) as server:
        client = start_request(server, "endless-chunked")
        received = 0
        while block := client.recv(1 << 20):
            received += len(block)
        client.close()
        served = only_record(server)
        assert served.ended == "capped" and received <= (4 << 20) + (1 << 17)


def test_client_going_away_ends_a_trickle(tmp_path: Path) -> None:
    with HostileServer(repo(tmp_path)) as server:
        client = start_request(server, "trickle-status")
        client.recv(100)
        client.close()
        served = only_record(server)
        assert served.ended == "client closed" and served.seconds < 3.0


def test_stop_ends_every_response(tmp_path: Path) -> None:
    server = HostileServer(repo(tmp_path))
    with server:
        clients = [start_request(server, attack) for attack in ("stall", "continue-flood",
                                                                "trickle-headers")]
        wait_until(lambda: server.active == len(clients), 5, "every attack to be under way")
        start = time.monotonic()
    assert time.monotonic() - start < 3.0 and server.wait_idle(5)
    assert {s.ended for s in server.served} == {"stopped"}
    for client in clients:
        client.close()
