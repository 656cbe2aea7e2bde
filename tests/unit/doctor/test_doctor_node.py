"""Node checks of `pycvmfs doctor` over injected facts, and the probe's INIT parsing."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import pytest

from pycvmfs.doctor import gather_node
from pycvmfs.doctor.node import (
    FuseDevice,
    Helper,
    Libfuse,
    NodeFacts,
    Sysctls,
    check_device,
    check_exec,
    check_helper,
    check_kernel,
    check_libfuse,
    check_namespaces,
    node_results,
    sysctl_fixes,
)
from pycvmfs.doctor.probe import (
    FUSE_INIT,
    FUSE_INIT_EXT,
    FUSE_SPLICE_READ,
    IN_HEADER,
    INIT_IN,
    ProbeReport,
    parse_init,
)
from pycvmfs.doctor.result import Level
from tests.unit.doctor.doctor_facts import GOOD, WORKING_PROBE


def facts(**changes: object) -> NodeFacts:
    return dataclasses.replace(GOOD, **changes)  # type: ignore[arg-type]


def test_a_good_node_is_all_ok() -> None:
    results = node_results(GOOD)
    assert [r.name for r in results] == ["/dev/fuse", "fusermount3", "user namespaces",
                                         "exec", "kernel", "libfuse3"]
    assert all(r.level is Level.OK and r.fix == "" for r in results), results


def test_fuse_device_missing_wrong_or_closed() -> None:
    missing = check_device(facts(device=FuseDevice(False)))
    assert missing.level is Level.FAIL and "modprobe fuse" in missing.fix
    wrong = check_device(facts(device=FuseDevice(True, True, 1, 3, 0o666)))
    assert wrong.level is Level.FAIL and "1,3" in wrong.found and "mknod" in wrong.fix
    not_char = check_device(facts(device=FuseDevice(True, False, 10, 229, 0o644)))
    assert not_char.level is Level.FAIL
    closed = check_device(facts(device=FuseDevice(True, True, 10, 229, 0o600,
                                                  "Permission denied")))
    assert closed.level is Level.FAIL
    assert "mode 0600" in closed.found and "uid 1000" in closed.found
    assert "chmod 666 /dev/fuse" in closed.fix
    assert "mode 0666" in check_device(GOOD).found


def test_fusermount3_for_users_and_root() -> None:
    assert check_helper(facts(helper=Helper(None))).level is Level.FAIL
    plain = check_helper(facts(helper=Helper("/usr/bin/fusermount3", setuid_root=False)))
    assert plain.level is Level.FAIL and "chmod u+s /usr/bin/fusermount3" in plain.fix
    root = check_helper(facts(euid=0, helper=Helper(None)))
    assert root.level is Level.OK and "root mounts without it" in root.found


def test_sysctl_fixes_name_each_switch() -> None:
    assert sysctl_fixes(Sysctls(1, 15000, 0)) == []
    assert sysctl_fixes(Sysctls(0, 0, 1)) == [
        "kernel.unprivileged_userns_clone=1", "user.max_user_namespaces=15000",
        "kernel.apparmor_restrict_unprivileged_userns=0"]


def test_namespaces_refused_is_a_warning_naming_the_sysctl() -> None:
    probe = ProbeReport(unshare="EPERM (Operation not permitted)")
    result = check_namespaces(facts(sysctls=Sysctls(unprivileged_userns_clone=0,
                                                     max_user_namespaces=15000), probe=probe))
    assert result.level is Level.WARN
    assert "unprivileged_userns_clone=0" in result.found and "EPERM" in result.found
    assert "sysctl kernel.unprivileged_userns_clone=1" in result.fix
    exec_line = check_exec(facts(probe=probe))
    assert exec_line.level is Level.WARN and exec_line.found.startswith("not available")


def test_apparmor_restriction_shows_as_a_failed_map() -> None:
    probe = ProbeReport(unshare="", uid_map="/proc/self/uid_map: Operation not permitted")
    result = check_namespaces(facts(sysctls=Sysctls(apparmor_restrict=1), probe=probe))
    assert result.level is Level.WARN
    assert "kernel.apparmor_restrict_unprivileged_userns=0" in result.fix


def test_no_probe_answer() -> None:
    result = check_namespaces(facts(probe=None, probe_error="no answer within 8 s"))
    assert result.level is Level.WARN and "no answer within 8 s" in result.found
    assert check_exec(facts(probe=None, probe_error="x")).level is Level.WARN


def test_exec_needs_the_device_and_the_mount_inside_the_namespace() -> None:
    closed = dataclasses.replace(WORKING_PROBE, fuse_open="/dev/fuse: Permission denied",
                                 fuse_mount="skipped")
    result = check_exec(facts(probe=closed))
    assert result.level is Level.WARN and "Permission denied" in result.found
    assert "chmod 666" in result.fix
    refused = dataclasses.replace(WORKING_PROBE, fuse_mount="EPERM (Operation not permitted)")
    old = check_exec(facts(probe=refused, kernel="4.15.0-1-generic"))
    assert "4.18" in old.fix
    new = check_exec(facts(probe=refused))
    assert new.level is Level.WARN and "refused" in new.found
    assert check_exec(GOOD).found.startswith("available")


def test_kernel_features() -> None:
    assert "FUSE protocol 7.45, offers splice, passthrough" in check_kernel(GOOD).found
    plain = dataclasses.replace(WORKING_PROBE, splice=False, passthrough=False)
    assert "neither splice nor passthrough" in check_kernel(facts(probe=plain)).found
    unknown = check_kernel(facts(probe=None))
    assert unknown.level is Level.OK and "protocol unknown" in unknown.found
    no_fs = check_kernel(facts(fuse_filesystem=False))
    assert no_fs.level is Level.FAIL and "modprobe fuse" in no_fs.fix


def test_libfuse_fallbacks() -> None:
    assert "3.14.0" in check_libfuse(GOOD).found
    fallback = check_libfuse(facts(libfuse=Libfuse(error="libfuse3.so.3 not found",
                                                   fallbacks=("mfusepy",))))
    assert fallback.level is Level.WARN and "mfusepy" in fallback.found
    none = check_libfuse(facts(libfuse=Libfuse(error="not found")))
    assert none.level is Level.FAIL and "libfuse3" in none.fix


def init_request(major: int, minor: int, flags: int, flags2: int = 0) -> bytes:
    body = INIT_IN.pack(major, minor, 131072, flags) + struct.pack("<I", flags2) + bytes(44)
    header = IN_HEADER.pack(IN_HEADER.size + len(body), FUSE_INIT, 2, 0, 0, 0, 0, 0, 0)
    return header + body


def test_parse_init_reads_version_and_offers() -> None:
    init = parse_init(init_request(7, 41, FUSE_SPLICE_READ | FUSE_INIT_EXT, 1 << 5))
    assert init is not None
    assert (init.protocol, init.splice, init.passthrough) == ("7.41", True, True)
    old = parse_init(init_request(7, 31, 0, 1 << 5))  # no FUSE_INIT_EXT: flags2 not read
    assert old is not None and (old.splice, old.passthrough) == (False, False)


@pytest.mark.parametrize("data", [b"", b"\0" * 20, init_request(7, 41, 0)[:-60] + b"x"])
def test_parse_init_refuses_other_bytes(data: bytes) -> None:
    assert parse_init(data) is None


def test_parse_init_refuses_another_opcode() -> None:
    data = bytearray(init_request(7, 41, 0))
    data[4] = 1  # FUSE_LOOKUP
    assert parse_init(bytes(data)) is None


def test_probe_report_round_trips_and_ignores_unknown_fields() -> None:
    text = json.dumps({**dataclasses.asdict(WORKING_PROBE), "future": 1})
    report = ProbeReport.from_json(text)
    assert report == WORKING_PROBE and report.exec_possible
    assert not ProbeReport().namespaces


def test_gathering_the_device_and_the_helper(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert gather_node.fuse_device(str(tmp_path / "none")) == FuseDevice(False)
    plain = tmp_path / "fuse"
    plain.write_bytes(b"")
    plain.chmod(0o640)
    device = gather_node.fuse_device(str(plain))
    assert (device.exists, device.is_char, device.mode, device.open_error) == (
        True, False, 0o640, "")
    assert check_device(facts(device=device)).level is Level.FAIL
    fake = tmp_path / "fusermount3"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gather_node.helper() == Helper(str(fake), setuid_root=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert gather_node.helper() == Helper(None)


def test_gathering_sysctls_and_libfuse() -> None:
    found = gather_node.sysctls()
    assert all(value is None or value >= 0 for value in (
        found.unprivileged_userns_clone, found.max_user_namespaces, found.apparmor_restrict))
    lib = gather_node.libfuse()
    assert bool(lib.release) != bool(lib.error)
