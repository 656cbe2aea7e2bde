"""Log files a mount appends to, opened so that another user cannot redirect them
(issue 9, class 4).

A background mount may log to `CACHE_BASE/FQRN.log`, directly in a base that can be a
world-writable sticky directory, and `CVMFS_USYSLOG`/`CVMFS_DEBUGLOG` name files anywhere.
A planted symlink or hard link there must never make a (root) mount append to another
file. So the file is opened relative to its directory's descriptor with `O_NOFOLLOW`
(`cache.safe_dir.SafeDir.open_file`) and must be a regular file of the mounting user with
one link; otherwise the mount refuses with `CacheSecurityError`. Rotation (`max_bytes`)
renames through the same descriptor, replaces the backup only if it is ours, and creates
the new file exclusively; when the backup is another user's the file is truncated in
place instead.

Thread-safety: as `logging.Handler` (emit holds the handler lock).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TextIO

from pycvmfs.cache.safe_dir import SafeDir, file_problem, open_base
from pycvmfs.errors import ConfigError

LOG_FILE_MODE = 0o600
APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT


class SafeLogFileHandler(logging.StreamHandler[TextIO]):
    """Append to `directory/name` (see the module docstring); takes over `directory`."""

    def __init__(self, directory: SafeDir, name: str, *, max_bytes: int = 0) -> None:
        self.directory = directory
        self.file_name = name
        self.path = directory.path / name
        self.max_bytes = max_bytes
        try:
            stream = self._stream(directory.open_file(name, APPEND, LOG_FILE_MODE,
                                                      check_mode=False))
        except BaseException:
            directory.close()
            raise
        super().__init__(stream)

    @staticmethod
    def _stream(fd: int) -> TextIO:
        return os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace")

    def emit(self, record: logging.LogRecord) -> None:
        if self.max_bytes:
            try:
                self._rotate_if_full()
            except Exception:
                self.handleError(record)
                return
        super().emit(record)

    def _rotate_if_full(self) -> None:
        self.stream.flush()
        if os.fstat(self.stream.fileno()).st_size < self.max_bytes:
            return
        backup = f"{self.file_name}.1"
        st = self.directory.lstat(backup)
        if st is not None and file_problem(st, self.directory.trust, mode=False) is not None:
            os.ftruncate(self.stream.fileno(), 0)  # never replace another user's file
            return
        self.stream.close()
        os.rename(self.file_name, backup, src_dir_fd=self.directory.fd,
                  dst_dir_fd=self.directory.fd)
        self.stream = self._stream(self.directory.open_file(
            self.file_name, APPEND | os.O_EXCL, LOG_FILE_MODE, check_mode=False))

    def close(self) -> None:
        self.acquire()
        try:
            if not self.stream.closed:
                self.stream.close()
            self.directory.close()
        finally:
            self.release()
        super().close()


def log_file_handler(path: Path | str, *, in_cache_base: bool = False,
                     max_bytes: int = 0) -> SafeLogFileHandler:
    """A handler for log file `path`. Its parent is the cache base (`in_cache_base`:
    checked by the base rule of `safe_dir`, it may be a shared sticky directory) or a
    directory the administrator named (opened as named, created if missing); the file
    itself is always checked."""
    path = Path(os.path.abspath(path))
    try:
        parent = open_base(path.parent, create=True, check=in_cache_base)
        return SafeLogFileHandler(parent, path.name, max_bytes=max_bytes)
    except OSError as exc:
        raise ConfigError(f"cannot open log file {path}: {exc.strerror or exc}; set "
                          "CVMFS_USYSLOG to a file you can write") from exc
