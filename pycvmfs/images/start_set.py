"""Start sets: the files a command opens as it starts, recorded once and published as a
CernVM-FS file bundle (`format.bundles`), so a client that opens the command's first file
(the trigger: normally the interpreter or entrypoint binary) prefetches the rest in
parallel instead of fetching them one by one as the command asks.

    command -> strace (open_trace: why strace) [-> bubblewrap, no network, the image's
    environment and working directory as `pycvmfs run --runner bwrap` builds them]
            -> opened files in first-open order, each resolved to the real regular file
               inside the tree (symlinks followed inside it, never out), plus the ELF or
               `#!` interpreter the kernel loads for each executed file
            -> trigger = the first; spec `.cvmfsbundle-<trigger name>` beside it listing
               the rest as repository paths (the tree's repository path + path in it)

Two trees: an image's root filesystem at ingest (`ImageTree`: the command runs inside it,
paths are the container's) and a mounted repository (`MountTree`: the command runs on the
host, only files under the mount count). Directories, /proc, /dev, /sys and files outside
the tree are left out; the list is deduplicated and bounded (`MAX_FILES`). The command runs
once, bounded in time (`DEFAULT_TIMEOUT_S`) and in log and output bytes; its output is
discarded but for the tail shown when it fails.

Repository paths are absolute: an image's flat tree lives at a path named by its config
digest (`.flat/ab/abcdef...`) that never changes while the image is published, so the
absolute path stays right, and it needs no `..` from the trigger's directory.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import signal
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from pycvmfs.errors import PycvmfsError
from pycvmfs.format.bundles import SPEC_PREFIX, render_spec
from pycvmfs.images.open_trace import Opened, parse_trace, strace_argv
from pycvmfs.images.runner import BwrapRunner, RunnerError, RunRequest
from pycvmfs.images.singularity import ImageConfig

DEFAULT_TIMEOUT_S = 60.0
MAX_FILES = 8192  # a Python start with numpy opens ~1,000 files
MAX_LOG_BYTES = 256 << 20  # the strace log; more means a command that does not just start
MAX_OUTPUT_BYTES = 16 << 20  # the command's stdout and stderr together
OUTPUT_TAIL_BYTES = 400  # shown when the command fails
POLL_S = 0.05
MAX_SYMLINK_HOPS = 40  # as the kernel's MAXSYMLINKS
MAX_INTERPRETER_DEPTH = 4  # script -> env -> ld.so
MAX_PROGRAM_HEADERS = 512
MAX_INTERPRETER_BYTES = 4096
EXCLUDED_TOPS = ("proc", "dev", "sys")
PT_INTERP = 3


class StartSetError(PycvmfsError):
    """A start set could not be recorded: no strace or bubblewrap, the command failed,
    timed out or opened nothing in the tree. Ingest reports it and goes on without it."""


@dataclass(frozen=True, slots=True)
class StartSet:
    """Tree paths ("/usr/bin/python3.11"): the trigger and the files it brings along."""

    trigger: str
    files: tuple[str, ...]


class Tree(Protocol):
    """Where recorded paths are resolved and looked at."""

    def resolve(self, path: str, cwd: str) -> str | None:
        """The tree path of the regular file `path` names (as the traced process saw it,
        relative ones from `cwd`), or None: missing, not regular, outside the tree."""
        ...

    def host_path(self, tree_path: str) -> Path:
        """Where a resolved tree path is on this host."""
        ...


@dataclass(frozen=True, slots=True)
class ImageTree:
    """A root filesystem on disk; paths are the container's, `/` being `root`."""

    root: Path

    def resolve(self, path: str, cwd: str) -> str | None:
        resolved = resolve_in_root(self.root, path, cwd)
        if resolved is None or resolved.split("/")[1] in EXCLUDED_TOPS:
            return None
        try:
            mode = os.lstat(self.host_path(resolved)).st_mode
        except OSError:
            return None
        return resolved if stat.S_ISREG(mode) else None

    def host_path(self, tree_path: str) -> Path:
        return self.root / tree_path.lstrip("/")


@dataclass(frozen=True, slots=True)
class MountTree:
    """A mounted repository: host paths, kept when they are under `mount` (and under
    `subtree`, a repository path); tree paths are repository paths."""

    mount: Path
    subtree: str = "/"

    def resolve(self, path: str, cwd: str) -> str | None:
        real = os.path.realpath(posixpath.join(cwd, path))
        mount = os.path.realpath(self.mount)
        if os.path.commonpath([mount, real]) != mount:
            return None
        relative = os.path.relpath(real, mount)
        inside = "/" if relative == "." else "/" + relative
        subtree = "/" + self.subtree.strip("/")
        if subtree != "/" and inside != subtree and not inside.startswith(subtree + "/"):
            return None
        try:
            mode = os.stat(real).st_mode
        except OSError:
            return None
        return posixpath.normpath(inside) if stat.S_ISREG(mode) else None

    def host_path(self, tree_path: str) -> Path:
        return self.mount / tree_path.lstrip("/")


def resolve_in_root(root: Path, path: str, cwd: str = "/") -> str | None:
    """`path` with every symlink followed as a process chrooted to `root` would (absolute
    targets start again at `root`, `..` stops at it), as a path from `root`; None when a
    component is missing or the links go round."""
    pending = [part for part in posixpath.join(cwd, path).split("/") if part][::-1]
    done: list[str] = []
    hops = 0
    while pending:
        name = pending.pop()
        if name == ".":
            continue
        if name == "..":
            if done:
                done.pop()
            continue
        candidate = root.joinpath(*done, name)
        try:
            mode = os.lstat(candidate).st_mode
            target = os.readlink(candidate) if stat.S_ISLNK(mode) else None
        except OSError:
            return None
        if target is None:
            done.append(name)
            continue
        hops += 1
        if hops > MAX_SYMLINK_HOPS:
            return None
        if target.startswith("/"):
            done = []
        pending.extend(part for part in reversed(target.split("/")) if part)
    return "/" + "/".join(done)


def interpreter_of(path: Path) -> str | None:
    """What the kernel loads to run the executable `path`: an ELF file's PT_INTERP (the
    dynamic loader) or a script's `#!` interpreter; None for neither (or unreadable)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(256)
            if head.startswith(b"#!"):
                words = head[2:].split(b"\n", 1)[0].split()
                return os.fsdecode(words[0]) if words else None
            return _elf_interpreter(handle, head)
    except (OSError, struct.error, ValueError):
        return None


def _elf_interpreter(handle: BinaryIO, head: bytes) -> str | None:
    if head[:4] != b"\x7fELF" or len(head) < 64 or head[5] not in (1, 2):
        return None
    order = "<" if head[5] == 1 else ">"
    if head[4] == 2:  # ELFCLASS64
        (phoff,) = struct.unpack_from(order + "Q", head, 32)
        phentsize, phnum = struct.unpack_from(order + "HH", head, 54)
        layout = order + "I4xQ16xQ"  # p_type, p_offset, p_filesz
    elif head[4] == 1:  # ELFCLASS32
        (phoff,) = struct.unpack_from(order + "I", head, 28)
        phentsize, phnum = struct.unpack_from(order + "HH", head, 42)
        layout = order + "II8xI"
    else:
        return None
    if phnum > MAX_PROGRAM_HEADERS or phentsize < struct.calcsize(layout):
        return None
    handle.seek(phoff)
    table = handle.read(phentsize * phnum)
    for index in range(len(table) // phentsize):
        kind, offset, size = struct.unpack_from(layout, table, index * phentsize)
        if kind == PT_INTERP and 0 < size <= MAX_INTERPRETER_BYTES:
            handle.seek(offset)
            name = handle.read(size).split(b"\0", 1)[0]
            return os.fsdecode(name) or None
    return None


def start_set(events: Iterable[Opened], tree: Tree, cwd: str = "/",
              limit: int = MAX_FILES) -> StartSet | None:
    """The start set of a traced command: every regular file of the tree it opened or
    executed, in first-open order, each executed file followed by its interpreters; the
    first is the trigger. None when it opened nothing in the tree."""
    ordered: dict[str, None] = {}

    def add(path: str, where: str, *, executed: bool, depth: int = 0) -> None:
        resolved = tree.resolve(path, where)
        if resolved is None or posixpath.basename(resolved).startswith(SPEC_PREFIX):
            return
        if len(ordered) < limit + 1:
            ordered.setdefault(resolved)
        if executed and depth < MAX_INTERPRETER_DEPTH:
            interpreter = interpreter_of(tree.host_path(resolved))
            if interpreter is not None:
                add(interpreter, cwd, executed=True, depth=depth + 1)

    for event in events:
        add(event.path, cwd, executed=event.executed)
    if not ordered:
        return None
    trigger, *files = ordered
    return StartSet(trigger, tuple(files))


def merge_start_sets(sets: Iterable[StartSet]) -> list[StartSet]:
    """One start set per trigger: lists of the same trigger joined in order, deduplicated."""
    merged: dict[str, dict[str, None]] = {}
    for each in sets:
        files = merged.setdefault(each.trigger, {})
        files.update(dict.fromkeys(path for path in each.files if path != each.trigger))
    return [StartSet(trigger, tuple(files)) for trigger, files in merged.items()]


def spec_path(trigger: str) -> str:
    """The tree path of the spec for `trigger`: `.cvmfsbundle-<name>` beside it."""
    directory, name = posixpath.split(trigger)
    return posixpath.join(directory, SPEC_PREFIX + name)


def spec_document(start: StartSet, prefix: str) -> bytes:
    """The spec listing `start`'s files as repository paths: `prefix` (the tree's
    repository path, "" or "/" for the repository root) + tree path."""
    return render_spec([repository_path(prefix, path) for path in start.files])


# --- recording ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Recorder:
    """Runs a command under strace once, bounded in time, log and output bytes."""

    strace: str
    timeout: float = DEFAULT_TIMEOUT_S
    max_log_bytes: int = MAX_LOG_BYTES

    @classmethod
    def find(cls, timeout: float = DEFAULT_TIMEOUT_S) -> Recorder:
        strace = shutil.which("strace")
        if strace is None:
            raise StartSetError("strace not found on PATH (apt-get install strace)")
        return cls(strace, timeout)

    def trace(self, argv: Sequence[str], env: Mapping[str, str], *, launcher: bool,
              cwd: str | None = None) -> list[Opened]:
        """The files `argv` opened (see `open_trace.parse_trace` for `launcher`);
        StartSetError when it cannot start, fails or runs too long."""
        with tempfile.TemporaryDirectory(prefix="pycvmfs-start-set-") as scratch:
            log, output = Path(scratch, "trace.log"), Path(scratch, "output")
            with open(output, "wb") as sink:
                try:
                    process = subprocess.Popen(
                        strace_argv(self.strace, log, argv), env=dict(env), cwd=cwd,
                        stdin=subprocess.DEVNULL, stdout=sink, stderr=sink,
                        start_new_session=True)
                except OSError as exc:
                    raise StartSetError(f"cannot start {self.strace}: {exc.strerror}") \
                        from None
                self._wait(process, log, output)
            if process.returncode != 0:
                status = (f"exit status {process.returncode}" if process.returncode > 0
                          else f"killed by signal {-process.returncode}")
                raise StartSetError(f"{status}{_tail(output)}")
            with open(log, encoding="ascii", errors="replace") as lines:
                return parse_trace(lines, launcher=launcher)

    def _wait(self, process: subprocess.Popen[bytes], log: Path, output: Path) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=POLL_S)
                return
            problem = None
            if time.monotonic() > deadline:
                problem = f"still running after {self.timeout:g} s"
            elif _size(log) > self.max_log_bytes or _size(output) > MAX_OUTPUT_BYTES:
                problem = "wrote too much (not a command that just starts?)"
            if problem is not None:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise StartSetError(f"{problem}; stopped")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _tail(output: Path) -> str:
    with open(output, "rb") as handle:
        handle.seek(max(0, _size(output) - OUTPUT_TAIL_BYTES))
        text = " ".join(handle.read().decode("utf-8", "replace").split())
    return f": {text}" if text else ""


def record_image_start_sets(root: Path, config: ImageConfig,
                            commands: Sequence[Sequence[str]], prefix: str,
                            recorder: Recorder, runner: BwrapRunner,
                            warn: Callable[[str], None]) -> list[str]:
    """Run each command in the image at `root` (bubblewrap `runner`, which should keep the
    network off) and write one spec per trigger into the tree; `prefix` is the image's
    repository path. A command that cannot be recorded is `warn`ed about and left out.
    Returns the tree paths of the specs written."""
    sets = []
    for command in commands:
        label = " ".join(command)
        try:
            request = RunRequest.for_image(root, command, config)
            invocation = runner.invocation(request)
            events = recorder.trace(invocation.argv, invocation.env, launcher=True)
            found = start_set(events, ImageTree(root), request.working_dir)
            if found is None:
                raise StartSetError("it opened no file of the image")
        except (StartSetError, RunnerError) as exc:
            warn(f"start set {label!r} not recorded: {exc}")
            continue
        sets.append(found)
    written = []
    for each in merge_start_sets(sets):
        spec = spec_path(each.trigger)
        target = root / spec.lstrip("/")
        if os.path.lexists(target):
            warn(f"start set for {each.trigger} not written: the image has its own {spec}")
            continue
        try:
            target.write_bytes(spec_document(each, prefix))
        except (OSError, PycvmfsError) as exc:
            warn(f"start set for {each.trigger} not written: {exc}")
            continue
        written.append(spec)
    return written


def record_start_sets_at_ingest(root: Path, config: ImageConfig,
                                commands: Sequence[Sequence[str]], prefix: str,
                                timeout: float, notify: Callable[[dict[str, object]], None]
                                ) -> list[str]:
    """Ingest's part (`ingest --start-set`): record the commands in the freshly unpacked
    image at `root`, published at repository path `prefix`, without network. Whatever goes
    wrong is a `{"action": "warning", "warning": "start_set"}` event and the image goes on
    without that start set: a start set only speeds a start up, it never fails an ingest.
    Returns the tree paths of the specs written."""
    def warn(message: str) -> None:
        notify({"action": "warning", "warning": "start_set", "message": message})

    bwrap = shutil.which("bwrap")
    try:
        recorder = Recorder.find(timeout)
        if bwrap is None:
            raise StartSetError("bwrap not found on PATH (apt-get install bubblewrap)")
        runner = BwrapRunner(bwrap, new_session=False, share_net=False)
        written = record_image_start_sets(root, config, commands, prefix, recorder, runner,
                                          warn)
    except Exception as exc:  # noqa: BLE001 -- never an ingest's failure (see above)
        warn(f"no start set recorded: {exc}")
        return []
    if written:
        notify({"action": "start_sets",
                "specs": [repository_path(prefix, spec) for spec in written]})
    return written


def repository_path(prefix: str, tree_path: str) -> str:
    """The repository path of a tree path under `prefix`."""
    base = "/" + prefix.strip("/") if prefix.strip("/") else ""
    return base + tree_path
