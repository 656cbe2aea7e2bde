"""Which files a command opened, in order, from an `strace` log: pure parsing, no I/O.

Why strace (Debian package `strace`): it works for root and for an ordinary user alike (a
tracer may trace its own children), follows every process and thread a command starts
(`-f`), sees opens by the dynamic loader like any others, and runs unchanged around
bubblewrap, whose user and mount namespaces ptrace crosses. `-y` decorates every returned
descriptor with the path the kernel resolved (symlinks followed, relative names joined, in
the traced process's own root), and `-xx` prints every string as hex escapes, so a file
name with quotes, brackets or newlines parses exactly. fanotify would need CAP_SYS_ADMIN
and sees every process on the filesystem (other users' opens too); a FUSE view changes the
paths and the timing of what it records.

What strace cannot see, the kernel opening an executable's ELF interpreter (ld.so) or a
script's `#!` interpreter during `execve`, the caller adds from the executed file itself
(`start_set.interpreter_of`).

Lines look like (with `-f -y -xx`; strings shortened here):

    574   execve("\\x2f\\x75...", [...], 0x7ffe... /* 1 var */) = 0
    576   openat(AT_FDCWD<\\x2f>, "\\x2f\\x65...", O_RDONLY|O_CLOEXEC) = 3<\\x2f\\x65...>
    576   openat(AT_FDCWD<\\x2f>, "\\x2f\\x6c...", O_RDONLY <unfinished ...>
    576   <... openat resumed>) = 3<\\x2f\\x6c...>
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

# `?` keeps strace quiet about a call this architecture lacks (aarch64 has no open)
TRACED_CALLS = "?open,openat,?openat2,execve,?execveat"
OPEN_CALLS = frozenset({"open", "openat", "openat2"})
EXEC_CALLS = frozenset({"execve", "execveat"})
SKIPPED_FLAGS = ("O_PATH", "O_DIRECTORY")  # names a place, reads no file contents

_LINE = re.compile(r"(\d+)\s+(.*)")
_CALL = re.compile(r"([a-z0-9_]+)\((.*)\)\s+=\s+(-?\d+)(?:<((?:\\x[0-9a-f]{2})*)>)?",
                   re.DOTALL)
_QUOTED = re.compile(r'"((?:\\x[0-9a-f]{2})*)"')
_DIRFD = re.compile(r"^(?:AT_FDCWD|-?\d+)(?:<((?:\\x[0-9a-f]{2})*)>)?\s*,")
_UNFINISHED = " <unfinished ...>"
_RESUMED = re.compile(r"<\.\.\. ([a-z0-9_]+) resumed>(.*)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Opened:
    """One successful open (or exec) of `path` by a traced process. `path` is absolute as
    the kernel resolved it for opens; an exec's may be relative to the process's working
    directory (strace cannot decorate it)."""

    path: str
    executed: bool = False


def strace_argv(strace: str, log: Path, command: Sequence[str]) -> list[str]:
    """The host command that runs `command` under strace, writing the log to `log`."""
    return [strace, "-f", "-y", "-xx", "-qq", "-e", f"trace={TRACED_CALLS}",
            "-o", str(log), "--", *command]


def unhex(text: str) -> str:
    """A `-xx` string (`\\x2f\\x65...`) as a file name (undecodable bytes kept, PEP 383)."""
    return os.fsdecode(bytes.fromhex(text.replace("\\x", "")))


def parse_trace(lines: Iterable[str], *, launcher: bool) -> list[Opened]:
    """The files the traced command opened or executed, in the order the calls completed.

    `launcher`: the traced program is only a launcher (bubblewrap) that executes the
    command: its own opens (the host's libraries, /proc) are not the command's. Its
    processes are the ones seen before the second successful exec; that exec and every
    process first seen after it are the command's. Without `launcher` every process is."""
    pending: dict[str, str] = {}
    launcher_pids: set[str] = set()
    inside: set[str] = set()
    execs = 0
    found: list[Opened] = []
    for raw in lines:
        line = _LINE.fullmatch(raw.rstrip("\n"))
        if line is None:
            continue
        pid, text = line.groups()
        if text.endswith(_UNFINISHED):
            pending[pid] = text[:-len(_UNFINISHED)]
            continue
        resumed = _RESUMED.match(text)
        if resumed is not None:
            start = pending.pop(pid, None)
            if start is None or not start.startswith(resumed.group(1) + "("):
                continue
            text = start + resumed.group(2)
        call = _CALL.fullmatch(text)
        if call is None:
            continue
        event = _event(*call.groups())
        if event is None:
            continue
        if event.executed:
            execs += 1
        if launcher:
            if event.executed and execs > 1:
                inside.add(pid)
            elif pid not in inside and (execs <= 1 or pid in launcher_pids):
                launcher_pids.add(pid)
                continue
            inside.add(pid)
        found.append(event)
    return found


def _event(name: str, args: str, result: str, decoration: str | None) -> Opened | None:
    if int(result) < 0:
        return None
    if name in EXEC_CALLS:
        return _exec(name, args)
    if name not in OPEN_CALLS or any(flag in args for flag in SKIPPED_FLAGS):
        return None
    if decoration:  # the kernel's own resolution of the new descriptor
        return Opened(unhex(decoration))
    quoted = _QUOTED.search(args)
    if quoted is None:
        return None
    path = unhex(quoted.group(1))
    if not path.startswith("/") and name != "open":
        dirfd = _DIRFD.match(args)
        if dirfd is None or not dirfd.group(1):
            return None
        path = posixpath.join(unhex(dirfd.group(1)), path)
    return Opened(path)


def _exec(name: str, args: str) -> Opened | None:
    quoted = _QUOTED.search(args)
    if quoted is None:
        return None
    path = unhex(quoted.group(1))
    if name == "execveat" and not path.startswith("/"):
        dirfd = _DIRFD.match(args)
        if dirfd is None or not dirfd.group(1) or not path:
            return None  # AT_EMPTY_PATH on an fd: the file is not named
        path = posixpath.join(unhex(dirfd.group(1)), path)
    return Opened(path, executed=True)
