"""Start sets, the pure parts: strace logs into ordered opens, paths resolved inside a
root filesystem, interpreters of executables, the trigger and the spec's repository
paths."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import click
import pytest

from pycvmfs.cli.images_admin import _start_set_command
from pycvmfs.format.bundles import SPEC_PREFIX
from pycvmfs.images.open_trace import Opened, parse_trace, strace_argv, unhex
from pycvmfs.images.runner import BwrapRunner, RunRequest
from pycvmfs.images.start_set import (
    ImageTree,
    MountTree,
    StartSet,
    interpreter_of,
    merge_start_sets,
    repository_path,
    resolve_in_root,
    spec_document,
    spec_path,
    start_set,
)


def hx(text: str) -> str:
    """A string as strace -xx prints it."""
    return "".join(f"\\x{byte:02x}" for byte in os.fsencode(text))


def opened(pid: int, path: str, real: str | None = None, flags: str = "O_RDONLY") -> str:
    return (f'{pid}   openat(AT_FDCWD<{hx("/")}>, "{hx(path)}", {flags}) = '
            f"3<{hx(real or path)}>")


def executed(pid: int, path: str, result: str = "0") -> str:
    return f'{pid}   execve("{hx(path)}", ["{hx("x")}"], 0x7ffe /* 1 var */) = {result}'


BWRAP_LOG = [
    executed(574, "/usr/bin/bwrap"),
    opened(574, "/etc/ld.so.cache"),  # the host's, bwrap's own
    opened(574, "/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
    "574   clone(child_stack=NULL, flags=CLONE_NEWNS|SIGCHLD) = 575",
    opened(575, "/newroot/dev/null", flags="O_RDONLY|O_CLOEXEC|O_PATH"),
    opened(575, "/proc/self/mountinfo"),
    executed(576, "/usr/local/bin/python3", "-1 ENOENT (No such file or directory)"),
    executed(576, "/usr/bin/python3"),
    opened(576, "/etc/ld.so.cache"),
    f'576   openat(AT_FDCWD<{hx("/")}>, "{hx("/lib/libm.so.6")}", O_RDONLY <unfinished ...>',
    opened(575, "/proc/575/fd"),  # bwrap's init, still the launcher's
    f"576   <... openat resumed>) = 3<{hx('/usr/lib/libm.so.6')}>",
    f'576   openat(AT_FDCWD<{hx("/")}>, "{hx("/nope")}", O_RDONLY) = -1 ENOENT (No such file)',
    opened(576, "/usr/lib/python3.11", flags="O_RDONLY|O_NONBLOCK|O_DIRECTORY"),
    opened(577, "/etc/passwd"),  # a child the command forked
    "576   +++ exited with 0 +++",
    "--- SIGCHLD {si_signo=SIGCHLD} ---",
]


def test_a_launcher_s_own_opens_are_left_out() -> None:
    assert parse_trace(BWRAP_LOG, launcher=True) == [
        Opened("/usr/bin/python3", executed=True), Opened("/etc/ld.so.cache"),
        Opened("/usr/lib/libm.so.6"), Opened("/etc/passwd")]


def test_without_a_launcher_every_process_counts() -> None:
    found = parse_trace(BWRAP_LOG, launcher=False)
    assert found[:2] == [Opened("/usr/bin/bwrap", executed=True), Opened("/etc/ld.so.cache")]
    assert Opened("/proc/self/mountinfo") in found
    assert Opened("/newroot/dev/null") not in found  # O_PATH reads nothing


def test_names_with_quotes_and_brackets_parse_exactly() -> None:
    weird = '/srv/we<i>rd "n\\a\nme'
    assert parse_trace([opened(9, weird)], launcher=False) == [Opened(weird)]
    assert unhex(hx("caf\u00e9")) == "caf\u00e9"


def test_an_undecorated_relative_open_is_joined_to_its_directory() -> None:
    line = f'7   openat(3<{hx("/usr/lib")}>, "{hx("x.so")}", O_RDONLY) = 4'
    assert parse_trace([line], launcher=False) == [Opened("/usr/lib/x.so")]


def test_strace_command_line() -> None:
    argv = strace_argv("/usr/bin/strace", Path("/tmp/log"), ["bwrap", "--", "true"])
    assert argv[:2] == ["/usr/bin/strace", "-f"] and "-y" in argv and "-xx" in argv
    assert argv[-4:] == ["--", "bwrap", "--", "true"]


# --- trees -------------------------------------------------------------------------------


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    for directory in ("usr/bin", "usr/lib", "etc", "proc", "dev", "srv"):
        (root / directory).mkdir(parents=True)
    (root / "usr/lib/libc.so.6").write_bytes(b"libc")
    (root / "usr/lib/ld.so").write_bytes(b"loader")
    (root / "usr/bin/python3.11").write_bytes(elf_with_interpreter("/lib64/ld.so"))
    (root / "usr/bin/python3").symlink_to("python3.11")
    (root / "lib64").symlink_to("usr/lib")
    (root / "etc/escape").symlink_to("/../../../../etc/passwd")
    (root / "etc/loop").symlink_to("loop")
    (root / "usr/bin/tool").write_bytes(b"#!/usr/bin/python3 -u\nprint()\n")
    (root / "proc/cpuinfo").write_bytes(b"")
    return root


def elf_with_interpreter(name: str, *, bits: int = 64, order: str = "<") -> bytes:
    """A minimal ELF image with one PT_LOAD and one PT_INTERP program header."""
    interp = name.encode() + b"\0"
    if bits == 64:
        header_size, entry_size = 64, 56
        header = bytearray(header_size)
        struct.pack_into(order + "Q", header, 32, header_size)
        struct.pack_into(order + "HH", header, 54, entry_size, 2)
        table_offset = header_size + 2 * entry_size
        table = (struct.pack(order + "II6Q", 1, 5, 0, 0, 0, 0, 0, 0)
                 + struct.pack(order + "II6Q", 3, 4, table_offset, 0, 0, len(interp), 0, 0))
    else:
        header_size, entry_size = 52, 32
        header = bytearray(64)  # the table starts after 12 bytes of padding
        struct.pack_into(order + "I", header, 28, 64)
        struct.pack_into(order + "HH", header, 42, entry_size, 2)
        table_offset = 64 + 2 * entry_size
        table = (struct.pack(order + "8I", 1, 0, 0, 0, 0, 0, 5, 0)
                 + struct.pack(order + "8I", 3, table_offset, 0, 0, len(interp), 0, 4, 0))
    header[:6] = b"\x7fELF" + bytes([2 if bits == 64 else 1, 1 if order == "<" else 2])
    return bytes(header) + table + interp


def test_symlinks_resolve_inside_the_root_and_never_out(rootfs: Path) -> None:
    assert resolve_in_root(rootfs, "/usr/bin/python3") == "/usr/bin/python3.11"
    assert resolve_in_root(rootfs, "/lib64/ld.so") == "/usr/lib/ld.so"
    assert resolve_in_root(rootfs, "../lib/libc.so.6", "/usr/bin") == "/usr/lib/libc.so.6"
    assert resolve_in_root(rootfs, "/../../usr/lib/ld.so") == "/usr/lib/ld.so"
    assert resolve_in_root(rootfs, "/etc/escape") is None  # root's /etc/passwd: not here
    assert resolve_in_root(rootfs, "/etc/loop") is None
    assert resolve_in_root(rootfs, "/usr/missing") is None


def test_only_regular_files_of_the_image_count(rootfs: Path) -> None:
    tree = ImageTree(rootfs)
    assert tree.resolve("python3", "/usr/bin") == "/usr/bin/python3.11"
    assert tree.resolve("/usr/lib", "/") is None  # a directory
    assert tree.resolve("/proc/cpuinfo", "/") is None
    assert tree.resolve("/dev/null", "/") is None


@pytest.mark.parametrize(("bits", "order"), [(64, "<"), (64, ">"), (32, "<")])
def test_the_elf_interpreter_is_read_from_the_program_headers(
        tmp_path: Path, bits: int, order: str) -> None:
    binary = tmp_path / "binary"
    binary.write_bytes(elf_with_interpreter("/lib/ld-linux.so.2", bits=bits, order=order))
    assert interpreter_of(binary) == "/lib/ld-linux.so.2"


def test_scripts_name_their_interpreter_and_other_files_none(tmp_path: Path) -> None:
    script, data, empty = tmp_path / "script", tmp_path / "data", tmp_path / "empty"
    script.write_bytes(b"#! /usr/bin/env  python3\n")
    data.write_bytes(b"\x7fELF" + b"\xff" * 80)  # garbage headers
    empty.write_bytes(b"")
    assert interpreter_of(script) == "/usr/bin/env"
    assert interpreter_of(data) is None and interpreter_of(empty) is None
    assert interpreter_of(tmp_path / "missing") is None


def test_the_first_file_triggers_and_interpreters_follow_executables(rootfs: Path) -> None:
    events = [Opened("/usr/bin/python3", executed=True), Opened("/usr/lib/libc.so.6"),
              Opened("/usr/bin/python3.11"), Opened("/usr/lib"), Opened("/usr/lib/libc.so.6"),
              Opened(f"/usr/bin/{SPEC_PREFIX}python3.11"), Opened("/proc/cpuinfo")]
    (rootfs / f"usr/bin/{SPEC_PREFIX}python3.11").write_bytes(b"{}")
    assert start_set(events, ImageTree(rootfs)) == StartSet(
        "/usr/bin/python3.11", ("/usr/lib/ld.so", "/usr/lib/libc.so.6"))


def test_a_script_brings_its_interpreter_and_its_loader(rootfs: Path) -> None:
    found = start_set([Opened("tool", executed=True)], ImageTree(rootfs), "/usr/bin")
    assert found == StartSet("/usr/bin/tool", ("/usr/bin/python3.11", "/usr/lib/ld.so"))


def test_a_start_set_is_bounded_and_may_be_empty(rootfs: Path) -> None:
    events = [Opened("/usr/lib/libc.so.6"), Opened("/usr/lib/ld.so"),
              Opened("/usr/bin/python3.11")]
    assert start_set(events, ImageTree(rootfs), limit=1) == StartSet(
        "/usr/lib/libc.so.6", ("/usr/lib/ld.so",))
    assert start_set([Opened("/proc/cpuinfo")], ImageTree(rootfs)) is None


def test_a_mounted_repository_keeps_files_under_its_path(tmp_path: Path) -> None:
    mount = tmp_path / "mnt"
    (mount / "sw/bin").mkdir(parents=True)
    (mount / "other").mkdir()
    (mount / "sw/bin/app").write_bytes(b"app")
    (mount / "other/lib").write_bytes(b"lib")
    (mount / "sw/bin/out").symlink_to(tmp_path)
    (mount / "sw/bin/lib").symlink_to("../../other/lib")
    whole, sw = MountTree(mount), MountTree(mount, "/sw")
    assert whole.resolve(str(mount / "sw/bin/app"), "/") == "/sw/bin/app"
    assert sw.resolve("bin/app", str(mount / "sw")) == "/sw/bin/app"
    assert whole.resolve(str(mount / "sw/bin/lib"), "/") == "/other/lib"
    assert sw.resolve(str(mount / "sw/bin/lib"), "/") is None  # outside /sw
    assert whole.resolve(str(mount / "sw/bin/out/mnt/sw/bin/app"), "/") == "/sw/bin/app"
    assert whole.resolve(str(tmp_path), "/") is None
    assert whole.resolve(str(mount / "sw/bin"), "/") is None


# --- triggers, specs -----------------------------------------------------------------------


def test_start_sets_of_one_trigger_merge_in_order() -> None:
    merged = merge_start_sets([StartSet("/bin/a", ("/x", "/y")), StartSet("/bin/b", ("/z",)),
                               StartSet("/bin/a", ("/y", "/bin/a", "/w"))])
    assert merged == [StartSet("/bin/a", ("/x", "/y", "/w")), StartSet("/bin/b", ("/z",))]


def test_specs_sit_beside_their_trigger_and_list_repository_paths() -> None:
    assert spec_path("/usr/bin/python3.11") == f"/usr/bin/{SPEC_PREFIX}python3.11"
    image = ".flat/ab/" + "ab" * 32
    document = json.loads(spec_document(StartSet("/usr/bin/python3.11",
                                                  ("/usr/lib/ld.so", "/etc/ld.so.cache")),
                                         "/" + image))
    assert document["name"] == "CVMFS_BUNDLE"
    assert document["dependencies"] == [f"/{image}/usr/lib/ld.so", f"/{image}/etc/ld.so.cache"]
    assert repository_path("/", "/sw/x") == repository_path("", "/sw/x") == "/sw/x"
    assert json.loads(spec_document(StartSet("/sw/a", ("/sw/b",)), "/"))["dependencies"] \
        == ["/sw/b"]


# --- the command line, the sandbox -----------------------------------------------------------


def test_start_set_commands_split_as_a_shell_would() -> None:
    assert _start_set_command("python3 -c 'import sys'") == ("python3", "-c", "import sys")
    for bad in ("", "  ", "python3 -c 'unbalanced"):
        with pytest.raises(click.BadParameter):
            _start_set_command(bad)


def test_the_recording_sandbox_has_no_network(rootfs: Path) -> None:
    request = RunRequest(rootfs, ("python3",), ("PATH=/usr/bin",), "/srv")
    closed = BwrapRunner("/usr/bin/bwrap", new_session=False, share_net=False)
    argv = closed.invocation(request).argv
    assert "--unshare-all" in argv and "--share-net" not in argv
    assert "--share-net" in BwrapRunner("/usr/bin/bwrap", new_session=False) \
        .invocation(request).argv
