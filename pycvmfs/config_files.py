"""Reading configuration-like files safely: the one place the client opens a configuration
file, a public key or a blacklist (`read_trusted_bytes`).

Why: these files decide which server and which key a mount trusts. A file another user can
write, or one that another account owns, lets that user redirect the mount (a `domain.d`
file did exactly that to a root mount), and a device or FIFO in their place hangs or floods
the reader. So, as a careful daemon does (sshd's StrictModes, sudo's sudoers checks):

- Owner: root or the user running pycvmfs (`FileTrust`); for a root mount that is root only.
  The rule applies to ordinary users too: a file a third user can write is as dangerous for
  them, and their own files and the root-owned packaged ones pass.
- Mode: not writable by others; group-writable only when the group is the owner's private
  group (its only member is the owner, as Debian's user-private-group patch to sshd decides),
  so a umask of 002 still works and a shared group does not.
- Directories: every directory the path is looked up in, from `/` down, including those a
  symlink leads through, must pass the same owner and mode rules, except that a directory
  writable by others is accepted when it is sticky (`/tmp`): there nobody can replace another
  user's entry, and whatever a stranger planted fails the owner rule of the next component.
  Symlinks are followed (the packaged `/etc/cvmfs` uses them), one component at a time.
- Type and size: the resolved path is opened with O_NOFOLLOW | O_NONBLOCK (a FIFO cannot
  block the open), `fstat` of that descriptor (not of the path) must show a regular file
  whose owner and mode pass, and at most `max_bytes` are read (`MAX_CONFIG_BYTES`, 1 MiB;
  `MAX_KEY_BYTES`, 64 KiB, for a public key): more is refused, never read.

Every refusal is a ConfigError naming the file, what is wrong (owner, mode, type, size) and
the fix (`chown root FILE`, `chmod go-w FILE`). A missing file is `None`; other I/O errors
(EACCES) propagate as OSError so that callers decide whether they are fatal.
The reference client sources its files with bash and checks none of this: we are stricter.

`ConfigFiles` applies the files of the hierarchy and the `--config` files to the merge
state through this check and says what it could not use (its docstring).

Thread-safety: no shared state. `pwd`/`grp` are consulted only to name owners and to decide
whether a group is private.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pycvmfs.config_shell import Settings, parse_config
from pycvmfs.errors import ConfigError

MAX_CONFIG_BYTES: Final = 1 << 20  # the reference's shipped files are a few KiB
MAX_KEY_BYTES: Final = 64 << 10  # a PEM RSA public key is under 1 KiB
MAX_SYMLINKS: Final = 40  # as the kernel's limit on symlinks followed in one lookup
_READ_STEP: Final = 64 << 10
_TYPES: Final = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                 (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
                 (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"))


@dataclass(frozen=True, slots=True)
class FileTrust:
    """Whose files are believed: root's and `uid`'s (the user running pycvmfs)."""

    uid: int

    @classmethod
    def current(cls) -> FileTrust:
        return cls(os.geteuid())

    def owns(self, st: os.stat_result) -> bool:
        return st.st_uid in (0, self.uid)

    @property
    def owners(self) -> str:
        return "root" if self.uid == 0 else f"root or {_login(self.uid)}"


def read_trusted_bytes(path: str | os.PathLike[str], *, what: str,
                       max_bytes: int = MAX_CONFIG_BYTES,
                       trust: FileTrust | None = None) -> bytes | None:
    """The bytes of `path` if it passes the rules of the module docstring; None if it (or a
    symlink's target) does not exist. `what` names the file in errors ("public key")."""
    trust = trust or FileTrust.current()
    shown = Path(path)
    try:
        real, lstat_result = _resolve(shown, what, trust)
    except FileNotFoundError:
        return None
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
                     | os.O_NOCTTY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # replaced by a symlink since the lookup
            raise ConfigError(f"{what} {shown} changed while it was opened; try again") from None
        raise
    try:
        st = os.fstat(fd)
        _check_file(shown, real, st, what, max_bytes, trust)
        if (st.st_dev, st.st_ino) != (lstat_result.st_dev, lstat_result.st_ino):
            raise ConfigError(f"{what} {shown} changed while it was opened; try again")
        return _read_capped(fd, shown, what, max_bytes)
    finally:
        os.close(fd)


def read_trusted_text(path: str | os.PathLike[str], *, what: str,
                      max_bytes: int = MAX_CONFIG_BYTES,
                      trust: FileTrust | None = None) -> str | None:
    """`read_trusted_bytes` decoded as UTF-8 (undecodable bytes become U+FFFD)."""
    data = read_trusted_bytes(path, what=what, max_bytes=max_bytes, trust=trust)
    return None if data is None else data.decode("utf-8", errors="replace")


def _resolve(path: Path, what: str, trust: FileTrust) -> tuple[Path, os.stat_result]:
    """The symlink-free path of `path` and its lstat, checking every directory a name is
    looked up in. FileNotFoundError when a component is missing."""
    if not path.is_absolute():
        path = Path(os.getcwd()) / path
    pending = list(path.parts[1:])
    current = Path("/")
    _check_directory(current, os.lstat(current), path, what, trust)
    found: os.stat_result | None = None
    links = 0
    while pending:
        name = pending.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            current, found = current.parent, None
            continue
        candidate = current / name
        st = os.lstat(candidate)
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                raise ConfigError(f"{what} {path}: more than {MAX_SYMLINKS} symbolic links "
                                  "on the way (a loop?)")
            target = Path(os.readlink(candidate))
            if target.is_absolute():
                current = Path("/")
            pending[:0] = [part for part in target.parts if part != "/"]
            continue
        if pending:  # a directory to look the next name up in
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(candidate))
            _check_directory(candidate, st, path, what, trust)
        current, found = candidate, st
    if found is None:  # the path ends at a directory named by `..` or `/`
        found = os.lstat(current)
    return current, found


def _check_directory(directory: Path, st: os.stat_result, path: Path, what: str,
                     trust: FileTrust) -> None:
    problems = _untrusted(st, trust, directory=True)
    if problems:
        raise ConfigError(
            f"{what} {path} is not trusted: its directory {directory} {problems}; whoever can "
            f"write a directory can plant files in it, so only directories owned by "
            f"{trust.owners} that no one else can write are used. "
            f"Fix: {_fix(directory, st, trust)}")


def _check_file(shown: Path, real: Path, st: os.stat_result, what: str, max_bytes: int,
                trust: FileTrust) -> None:
    where = f"{shown}" if shown == real else f"{shown} (-> {real})"
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _TYPES if test(st.st_mode)), "not a plain file")
        raise ConfigError(f"{what} {where} is {kind}, not a regular file: only regular "
                          "files are read (a device or FIFO can block or never end)")
    problems = _untrusted(st, trust, directory=False)
    if problems:
        raise ConfigError(
            f"{what} {where} is not trusted: it {problems}; only files owned by "
            f"{trust.owners} that no one else can write are read (they choose servers and "
            f"keys). "
            f"Fix: {_fix(real, st, trust)}")
    if st.st_size > max_bytes:
        raise ConfigError(_too_big(what, where, max_bytes, st.st_size))


def _read_capped(fd: int, shown: Path, what: str, max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = os.read(fd, min(_READ_STEP, max_bytes + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:  # grew since fstat
            raise ConfigError(_too_big(what, str(shown), max_bytes))


def _too_big(what: str, where: str, max_bytes: int, size: int | None = None) -> str:
    what_size = "" if size is None else f" ({size} bytes)"
    return (f"{what} {where}{what_size} is larger than the limit of {max_bytes} bytes for "
            f"a {what}; that cannot be one: check what the file is")


def _untrusted(st: os.stat_result, trust: FileTrust, *, directory: bool) -> str:
    """Why `st` is not trusted ("" if it is), as `is ... and is ...`."""
    problems = []
    mode = st.st_mode
    if not trust.owns(st):
        problems.append(f"is owned by {_user_name(st.st_uid)}, not by {trust.owners}")
    sticky = directory and bool(mode & stat.S_ISVTX)
    if mode & stat.S_IWOTH and not sticky:
        problems.append(f"is writable by every user (mode {stat.S_IMODE(mode):04o})")
    elif mode & stat.S_IWGRP and not sticky and not _private_group(st.st_gid, st.st_uid):
        problems.append(f"is writable by group {_group_name(st.st_gid)}, which has other "
                        f"members (mode {stat.S_IMODE(mode):04o})")
    return " and ".join(problems)


def _private_group(gid: int, owner: int) -> bool:
    """True when `owner` is the only member of group `gid` (by primary or supplementary
    membership), as Debian's sshd decides that a group-writable file is safe."""
    try:
        group = grp.getgrgid(gid)
        owner_name = pwd.getpwuid(owner).pw_name
    except KeyError:
        return False
    primary = {entry.pw_uid for entry in pwd.getpwall() if entry.pw_gid == gid}
    if primary - {owner}:
        return False
    if any(member != owner_name for member in group.gr_mem):
        return False
    return bool(primary) or group.gr_mem == [owner_name]


def _fix(path: Path, st: os.stat_result, trust: FileTrust) -> str:
    steps = []
    if not trust.owns(st):
        steps.append(f"`chown {_login(trust.uid)} {path}`")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        steps.append(f"`chmod go-w {path}`")
    return " and ".join(steps)


def _login(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _user_name(uid: int) -> str:
    login = _login(uid)
    return f"uid {uid}" if login == str(uid) else f"{login} (uid {uid})"


def _group_name(gid: int) -> str:
    try:
        return f"{grp.getgrgid(gid).gr_name} (gid {gid})"
    except KeyError:
        return f"gid {gid}"


# --- applying configuration files -----------------------------------------------------------


class ConfigFiles:
    """Reads config files into `settings`, collecting errors, warnings and the files read.

    A file the user named (`--config`, `required`) that is missing, unreadable, binary or
    holds lines that are not assignments is an error; a file of the hierarchy that exists
    but cannot be read (permission denied, a directory, a dangling symlink, binary) is a
    warning naming it and the reason, and is skipped. A file that is not trusted
    (`config_files`) is always an error."""

    def __init__(self, settings: Settings, trust: FileTrust) -> None:
        self.settings = settings
        self.trust = trust
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.read: list[Path] = []
        self.unreadable: list[Path] = []

    def _cannot(self, path: Path, why: str, *, required: bool, line: int = 0) -> None:
        where = f"{path}:{line}" if line else f"{path}"
        if required:
            self.errors.append(f"configuration file {where}: {why}")
        else:
            self.unreadable.append(path)
            self.warnings.append(f"{where}: cannot be read ({why}); ignored")

    def listed(self, directory: Path, suffix: str) -> list[Path]:
        """The files `directory/*suffix`, sorted; a directory that exists but cannot be
        listed is a warning (its files would be skipped without a word)."""
        try:
            names = os.listdir(directory)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            self._cannot(directory, exc.strerror or str(exc), required=False)
            return []
        return sorted(directory / name for name in names  # as the shell glob *.conf
                      if name.endswith(suffix) and not name.startswith("."))

    def apply(self, path: Path, *, required: bool = False) -> None:
        """Parse `path` if it exists (see the class docstring for what is reported)."""
        try:
            if os.stat(path).st_mode & 0o170000 == stat.S_IFDIR:
                self._cannot(path, "is a directory", required=required)
                return
        except FileNotFoundError:
            if os.path.lexists(path):
                self._cannot(path, f"a dangling symbolic link to {os.readlink(path)}",
                             required=required)
            elif required:
                self.errors.append(f"configuration file {path}: no such file")
            return
        except OSError as exc:
            self._cannot(path, exc.strerror or str(exc), required=required)
            return
        try:
            data = read_trusted_bytes(path, what="configuration file", trust=self.trust)
        except ConfigError as exc:
            self.errors.append(str(exc))
            return
        except OSError as exc:
            self._cannot(path, exc.strerror or str(exc), required=required)
            return
        if data is None:  # removed since the stat
            return
        binary = _binary_line(data)
        if binary:
            self._cannot(path, "binary data (a control character), not KEY=VALUE lines",
                         required=required, line=binary)
            return
        self.read.append(path)
        result = parse_config(data.decode("utf-8", errors="replace"), source=str(path),
                              settings=self.settings)
        if required and result.malformed:
            first = result.warnings[0].removesuffix("; ignored")
            self.errors.append(f"{first}; a --config file must hold only KEY=VALUE lines "
                               f"({result.malformed} line(s) of it are not)")
            return  # the error says it; its warnings would repeat it
        self.warnings += result.warnings


_CONTROL = re.compile(rb"[\x00-\x08\x0e-\x1a\x1c-\x1f]")  # not \t \n \v \f \r ESC DEL


def _binary_line(data: bytes) -> int:
    """The line of the first control character no text file has (0: none)."""
    found = _CONTROL.search(data)
    return 0 if found is None else data.count(b"\n", 0, found.start()) + 1
