"""Which public keys verify a repository's whitelist (fact sheet 12.2).

CVMFS_PUBLIC_KEY wins (files or directories of `*.pub`, `:`-separated); else the first
directory holding `*.pub` of CVMFS_KEYS_DIR (default `<root>/keys`), `<root>/keys/<domain>`,
the user's `~/.config/pycvmfs/keys/<domain>` and `~/.config/pycvmfs/keys` (for machines
without the cvmfs packages). Every key file is checked as `read_trusted_bytes` reads it
(owner, mode, type, size), so a key file someone else can write is refused before
anything is fetched; no key at all is a ConfigError naming where it looked.

I/O: globs the key directories and reads the key files; nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pycvmfs.config_defaults import no_keys_message, split_fqrn, user_keys_dir
from pycvmfs.config_files import MAX_KEY_BYTES, FileTrust, read_trusted_bytes
from pycvmfs.config_keys import misspelled
from pycvmfs.config_values import Typed
from pycvmfs.errors import ConfigError

if TYPE_CHECKING:
    from pycvmfs.config import MergedSettings


def key_search_dirs(merged: MergedSettings) -> list[Path]:
    """Where `*.pub` files are looked for when CVMFS_PUBLIC_KEY is unset, in order."""
    typed = merged.typed()
    _, domain = split_fqrn(merged.fqrn)
    user = user_keys_dir(merged.environ)
    dirs = [typed.path("CVMFS_KEYS_DIR") or merged.config_root / "keys"]
    if domain:
        dirs += [merged.config_root / "keys" / domain, user / domain]
    dirs.append(user)
    return list(dict.fromkeys(dirs))


def resolve_public_keys(merged: MergedSettings, *,
                        trust: FileTrust | None = None) -> tuple[Path, ...]:
    """The key files: CVMFS_PUBLIC_KEY wins, else the first search dir holding `*.pub`.
    Each is checked as `read_trusted_bytes` reads it (owner, mode, type, size): a key file
    someone else can write is refused here, before anything is fetched."""
    typed = merged.typed()
    explicit = typed.optional("CVMFS_PUBLIC_KEY")
    if explicit is not None:
        files = _explicit_keys(explicit, typed.origin("CVMFS_PUBLIC_KEY"), typed)
    else:
        dirs = key_search_dirs(merged)
        files = next((found for found in (_pub_files(d) for d in dirs) if found), ())
        if not files:
            hint = misspelled(merged.origins, "CVMFS_PUBLIC_KEY").strip().strip("()")
            raise ConfigError((f"{hint}; " if hint else "") + no_keys_message(
                merged.fqrn, split_fqrn(merged.fqrn)[1], dirs, user_keys_dir(merged.environ)))
    for path in files:
        if read_trusted_bytes(path, what="public key", max_bytes=MAX_KEY_BYTES,
                              trust=trust) is None:
            raise ConfigError(f"public key {path}: no such file (a dangling symlink?)")
    return files


def _pub_files(directory: Path) -> tuple[Path, ...]:
    return tuple(sorted(directory.glob("*.pub"))) if directory.is_dir() else ()


def _explicit_keys(value: str, origin: str, typed: Typed) -> tuple[Path, ...]:
    files: list[Path] = []
    for part in (p.strip() for p in value.split(":")):
        if not part:
            continue
        path = typed.expand_home(part)
        if path.is_dir():
            files += _pub_files(path)
        elif path.exists():
            files.append(path)
        else:
            raise ConfigError(f"CVMFS_PUBLIC_KEY (set in {origin}) names {path}: "
                              "no such file or directory")
    if not files:
        raise ConfigError(f"CVMFS_PUBLIC_KEY={value!r} (set in {origin}): no key files")
    return tuple(files)
