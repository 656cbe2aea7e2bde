"""Find the file bundles of a walked tree: which files the catalogs mark as triggers.

A spec `.cvmfsbundle-<name>` beside a regular file `<name>` makes that file a bundle
trigger (catalog flag `Flags.BUNDLE_TRIGGER`, as the reference publisher of CernVM-FS 2.14
sets it). Every spec is validated here, before anything is stored. A spec that cannot be
used never fails the publish: it is published as the ordinary file it is, its trigger
stays unmarked, and a warning names the spec and the cause. Listed files that are not in
the published tree (or are not regular files) only warn: clients skip them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pycvmfs.format.bundles import MAX_SPEC_BYTES, BundleSpecError, parse_spec, trigger_of
from pycvmfs.publisher.tree_walk import Node

MISSING_SHOWN = 3


@dataclass(frozen=True, slots=True)
class BundleScan:
    """Repository paths of the files to mark as triggers, and what the user should read."""

    triggers: frozenset[str]
    warnings: tuple[str, ...]


def read_spec(node: Node) -> bytes:
    """A spec's bytes, one byte over the limit at most (parse_spec then refuses it)."""
    with open(node.source, "rb") as fh:
        return fh.read(MAX_SPEC_BYTES + 1)


def find_bundles(root: Node, read: Callable[[Node], bytes] = read_spec) -> BundleScan:
    """Every usable spec of the tree under `root`; `read` returns a spec file's bytes."""
    specs: list[tuple[Node, Node]] = []  # (directory, spec)
    kinds: dict[str, Node] = {}
    kept: list[str] = []
    for directory in _directories(root):
        if directory.kept:
            kept.append(directory.path + "/")
        for child in directory.children:
            kinds[child.path] = child
            if trigger_of(child.name) is not None:
                specs.append((directory, child))
    triggers: set[str] = set()
    warnings: list[str] = []
    for directory, spec in specs:
        trigger_path = f"{directory.path}/{trigger_of(spec.name)}"
        try:
            dependencies = _check(spec, kinds.get(trigger_path), directory.path, read)
        except BundleSpecError as exc:
            warnings.append(f"{spec.path}: unusable bundle spec ({exc}); published as an "
                            f"ordinary file, {trigger_path} is not a bundle trigger")
            continue
        triggers.add(trigger_path)
        absent = [p for p in dependencies
                  if not _is_file(kinds.get(p)) and not p.startswith(tuple(kept))]
        if absent:
            shown = ", ".join(absent[:MISSING_SHOWN])
            more = f" and {len(absent) - MISSING_SHOWN} more" if len(absent) > MISSING_SHOWN \
                else ""
            warnings.append(f"{spec.path}: {len(absent)} of the {len(dependencies)} listed "
                            f"files are not regular files in this revision ({shown}{more}); "
                            "clients skip them")
    return BundleScan(frozenset(triggers), tuple(warnings))


def _check(spec: Node, trigger: Node | None, directory: str,
           read: Callable[[Node], bytes]) -> list[str]:
    if not spec.is_regular:
        raise BundleSpecError("the spec is not a regular file")
    if trigger is None or not trigger.is_regular:
        raise BundleSpecError(f"no regular file {trigger_of(spec.name)!r} beside it to "
                              "trigger the bundle")
    try:
        data = read(spec)
    except OSError as exc:
        raise BundleSpecError(f"cannot read it: {exc.strerror or exc}") from None
    return parse_spec(data, directory)


def _is_file(node: Node | None) -> bool:
    return node is not None and node.is_regular


def _directories(root: Node) -> Iterator[Node]:
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(c for c in node.children if c.is_dir)
