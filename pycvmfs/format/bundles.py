"""File bundle specifications (CernVM-FS 2.14 file bundles).

A spec named `.cvmfsbundle-<name>` sits beside its trigger file `<name>`. It is a small
JSON document:

    {"name": "CVMFS_BUNDLE", "version": "1.0.0", "encoding": "UTF-8",
     "dependencies": ["/absolute/from/the/repository/root", "relative/to/the/spec"]}

A dependency with a leading `/` is a repository path; one without (optionally `./`) is
relative to the directory holding the spec. The reference client skips leading lines that
start with `#` (a `#%CVMFS_BUNDLE version=1 encoding=UTF-8` header) before the JSON, so
the parser does too. Parsing is bounded (bytes and entries) and every path comes back
normalized and inside the repository: a spec is untrusted input on both sides, the
publisher's tree and a client's download.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from pycvmfs.errors import PycvmfsError

SPEC_PREFIX = ".cvmfsbundle-"
SPEC_DOCUMENT_NAME = "CVMFS_BUNDLE"
SPEC_VERSION = "1.0.0"
SPEC_ENCODING = "UTF-8"

MAX_SPEC_BYTES = 8 << 20  # a start set of a whole image stays far below this
MAX_DEPENDENCIES = 65536
MAX_PATH_BYTES = 4096  # PATH_MAX: no longer path can name a file


class BundleSpecError(PycvmfsError):
    """A bundle spec that cannot be used; the message names the cause."""


def spec_name(trigger_name: str) -> str:
    """The name of the spec that belongs beside the trigger file `trigger_name`."""
    if not trigger_name or "/" in trigger_name or "\0" in trigger_name \
            or trigger_name in (".", ".."):
        raise BundleSpecError(f"{trigger_name!r} is not a file name a bundle can trigger on")
    return SPEC_PREFIX + trigger_name


def trigger_of(name: str) -> str | None:
    """The trigger file name a spec named `name` belongs to, or None when `name` is not a
    spec's name (or names no trigger)."""
    if not name.startswith(SPEC_PREFIX):
        return None
    trigger = name[len(SPEC_PREFIX):]
    if not trigger or "/" in trigger or "\0" in trigger or trigger in (".", ".."):
        return None
    return trigger


def render_spec(dependencies: Sequence[str]) -> bytes:
    """The spec document listing `dependencies` in order (duplicates dropped), UTF-8 JSON
    as the reference's documentation shows it."""
    seen: set[str] = set()
    listed: list[str] = []
    for entry in dependencies:
        _check_entry(entry, len(listed))
        if entry not in seen:
            seen.add(entry)
            listed.append(entry)
    if len(listed) > MAX_DEPENDENCIES:
        raise BundleSpecError(f"a bundle lists at most {MAX_DEPENDENCIES} files, "
                              f"not {len(listed)}")
    document = {"name": SPEC_DOCUMENT_NAME, "version": SPEC_VERSION,
                "encoding": SPEC_ENCODING, "dependencies": listed}
    data = (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    if len(data) > MAX_SPEC_BYTES:
        raise BundleSpecError(f"the bundle spec would be {len(data)} bytes, over the "
                              f"{MAX_SPEC_BYTES}-byte limit")
    return data


def parse_spec(data: bytes, spec_dir: str) -> list[str]:
    """The dependencies of a spec stored in directory `spec_dir` ("" or "/" for the root,
    else "/a/b"), as normalized absolute repository paths in the spec's order, each once."""
    if len(data) > MAX_SPEC_BYTES:
        raise BundleSpecError(f"the spec is {len(data)} bytes, over the "
                              f"{MAX_SPEC_BYTES}-byte limit")
    base = _split("/" + spec_dir, f"the spec's directory ({spec_dir!r})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleSpecError(f"the spec is not UTF-8 ({exc.reason} at byte {exc.start})") \
            from None
    try:
        document = json.loads(_skip_header_lines(text))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise BundleSpecError(f"the spec is not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise BundleSpecError("the spec is not a JSON object")
    if document.get("name") != SPEC_DOCUMENT_NAME:
        raise BundleSpecError(f"the spec's \"name\" is {document.get('name')!r}, "
                              f"not {SPEC_DOCUMENT_NAME!r}")
    version = document.get("version")
    if not isinstance(version, str) or version.split(".")[0] != SPEC_VERSION.split(".")[0]:
        raise BundleSpecError(f"the spec's \"version\" is {version!r}; this client reads "
                              f"version {SPEC_VERSION.split('.')[0]}.x")
    encoding = document.get("encoding", SPEC_ENCODING)
    if not isinstance(encoding, str) or encoding.upper().replace("_", "-") != SPEC_ENCODING:
        raise BundleSpecError(f"the spec's \"encoding\" is {encoding!r}, not "
                              f"{SPEC_ENCODING!r}")
    entries = document.get("dependencies")
    if not isinstance(entries, list):
        raise BundleSpecError("the spec has no \"dependencies\" list")
    if len(entries) > MAX_DEPENDENCIES:
        raise BundleSpecError(f"the spec lists {len(entries)} files, over the limit of "
                              f"{MAX_DEPENDENCIES}")
    seen: set[str] = set()
    paths: list[str] = []
    for index, entry in enumerate(entries):
        _check_entry(entry, index)
        path = _resolve(entry, base, index)
        if path not in seen:
            seen.add(path)
            paths.append(path)
    return paths


def _skip_header_lines(text: str) -> str:
    """Drop leading lines that start with `#`, as the reference client does."""
    while text.startswith("#"):
        newline = text.find("\n")
        text = "" if newline == -1 else text[newline + 1:]
    return text


def _check_entry(entry: object, index: int) -> None:
    if not isinstance(entry, str):
        raise BundleSpecError(f"dependency {index} is {type(entry).__name__}, not a path")
    if not entry:
        raise BundleSpecError(f"dependency {index} is empty")
    if "\0" in entry:
        raise BundleSpecError(f"dependency {index} contains a NUL byte")
    if len(entry.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise BundleSpecError(f"dependency {index} is longer than {MAX_PATH_BYTES} bytes")


def _split(path: str, what: str) -> list[str]:
    """The components of an absolute path, `.` and empty ones dropped, `..` applied; a
    `..` above the root is an error."""
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise BundleSpecError(f"{what} leaves the repository")
            parts.pop()
        else:
            parts.append(part)
    return parts


def _resolve(entry: str, base: list[str], index: int) -> str:
    what = f"dependency {index} ({entry!r})"
    parts = _split(entry if entry.startswith("/") else "/".join(["", *base, entry]), what)
    if not parts:
        raise BundleSpecError(f"{what} names the repository root, not a file")
    return "/" + "/".join(parts)
