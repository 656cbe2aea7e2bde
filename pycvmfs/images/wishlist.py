"""DUCC v1 wishlists (fact sheet 14.4): parse, expand tag globs, convert, loop.

    version: 1                      # required, must be 1
    user: example-bot               # accepted (thin images are not produced here)
    cvmfs_repo: images.example.org  # the target repository
    output_format: '...'            # accepted and ignored (thin-image name)
    input:
      - 'https://registry.hub.docker.com/library/alpine:3.19'
      - 'ghcr.io/example/tools:v2.*' # `*` globs in the tag only

`parse_wishlist` checks everything and raises `WishlistError` naming the file, line and field;
`expand(wishlist, list_tags)` turns glob tags into the concrete tags the registry lists
(sorted, deduplicated; an entry without a glob passes through unchanged); `convert` = expand
+ one `ingest` (one publish); `loop` repeats `convert` every `interval` seconds until a
stop event is set (or `rounds` rounds ran), logging a failed round and going on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped, unused-ignore]  # stubs: types-PyYAML

from pycvmfs.errors import ImageError
from pycvmfs.images.ingest import IngestOptions, IngestResult, ingest
from pycvmfs.images.reference import ImageReference, parse_reference
from pycvmfs.images.registry import RegistryClient

log = logging.getLogger(__name__)

SUPPORTED_VERSION = 1
KNOWN_FIELDS = frozenset({"version", "user", "cvmfs_repo", "output_format", "input"})
MAX_WISHLIST_BYTES = 4 << 20

ListTags = Callable[[ImageReference], list[str]]


class WishlistError(ImageError):
    """A wishlist that cannot be used; the message names the file, line and field."""


@dataclass(frozen=True, slots=True)
class WishlistInput:
    text: str  # as written
    line: int  # 1-based line in the file
    reference: ImageReference  # parsed, maybe with a `*` glob in the tag


@dataclass(frozen=True, slots=True)
class Wishlist:
    version: int
    cvmfs_repo: str
    inputs: tuple[WishlistInput, ...]
    user: str | None = None
    output_format: str | None = None
    source: str = "<wishlist>"


def load_wishlist(path: Path) -> Wishlist:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WishlistError(f"{path}: cannot read the wishlist: {exc.strerror or exc}") from None
    if len(data) > MAX_WISHLIST_BYTES:
        raise WishlistError(f"{path}: larger than {MAX_WISHLIST_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WishlistError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    return parse_wishlist(text, source=str(path))


def parse_wishlist(text: str, *, source: str = "<wishlist>") -> Wishlist:
    """Parse and check a v1 wishlist (module docstring)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f":{mark.line + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise WishlistError(f"{source}{where}: not valid YAML: {problem}") from None
    if root is None:
        raise WishlistError(f"{source}: empty wishlist")
    if not isinstance(root, yaml.MappingNode):
        raise WishlistError(f"{source}:{_line(root)}: the wishlist must be a mapping "
                            "(version, user, cvmfs_repo, input)")
    fields: dict[str, tuple[Any, yaml.Node]] = {}
    for key_node, value_node in root.value:
        key = _scalar(key_node, source)
        if not isinstance(key, str):
            raise WishlistError(f"{source}:{_line(key_node)}: field names must be strings")
        if key in fields:
            raise WishlistError(f"{source}:{_line(key_node)}: field {key!r} given twice")
        if key not in KNOWN_FIELDS:
            raise WishlistError(f"{source}:{_line(key_node)}: unknown field {key!r} "
                                f"(known: {', '.join(sorted(KNOWN_FIELDS))})")
        fields[key] = (_construct(value_node, source), value_node)

    def required(name: str) -> tuple[Any, yaml.Node]:
        if name not in fields:
            raise WishlistError(f"{source}: missing required field {name!r}")
        return fields[name]

    version, node = required("version")
    if isinstance(version, bool) or version != SUPPORTED_VERSION:
        raise WishlistError(f"{source}:{_line(node)}: field 'version': unsupported wishlist "
                            f"version {version!r} (only {SUPPORTED_VERSION})")
    repo, node = required("cvmfs_repo")
    if not isinstance(repo, str) or not repo.strip():
        raise WishlistError(f"{source}:{_line(node)}: field 'cvmfs_repo' must be a "
                            "repository name")
    user = _optional_str(fields, "user", source)
    output_format = _optional_str(fields, "output_format", source)
    items, node = required("input")
    if not isinstance(node, yaml.SequenceNode):
        raise WishlistError(f"{source}:{_line(node)}: field 'input' must be a list of images")
    inputs = []
    for item_node, item in zip(node.value, items, strict=True):
        line = _line(item_node)
        if not isinstance(item, str):
            raise WishlistError(f"{source}:{line}: field 'input': expected an image reference "
                                f"string, got {type(item).__name__}")
        reference = _parse_input(item, f"{source}:{line}: field 'input'")
        inputs.append(WishlistInput(item, line, reference))
    if not inputs:
        raise WishlistError(f"{source}:{_line(node)}: field 'input' lists no images")
    return Wishlist(version=SUPPORTED_VERSION, cvmfs_repo=repo.strip(), inputs=tuple(inputs),
                    user=user, output_format=output_format, source=source)


def _parse_input(text: str, where: str) -> ImageReference:
    try:
        reference = parse_reference(text, allow_glob=True)
    except ImageError as exc:
        raise WishlistError(f"{where}: {exc}") from None
    if not reference.is_registry:
        raise WishlistError(f"{where}: {text!r} is not a registry image")
    if reference.has_glob and reference.digest is not None:
        raise WishlistError(f"{where}: {text!r}: a tag glob cannot be pinned to a digest")
    return reference


def _construct(node: yaml.Node, source: str) -> Any:
    try:
        return yaml.SafeLoader("").construct_document(node)
    except yaml.YAMLError as exc:
        raise WishlistError(f"{source}:{_line(node)}: {exc}") from None


def _scalar(node: yaml.Node, source: str) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise WishlistError(f"{source}:{_line(node)}: field names must be strings")
    return _construct(node, source)


def _optional_str(fields: dict[str, tuple[Any, yaml.Node]], name: str,
                  source: str) -> str | None:
    if name not in fields:
        return None
    value, node = fields[name]
    if value is not None and not isinstance(value, str):
        raise WishlistError(f"{source}:{_line(node)}: field {name!r} must be a string")
    return value


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


# -- expansion, conversion --------------------------------------------------------------


def expand(wishlist: Wishlist, list_tags: ListTags) -> list[str]:
    """Concrete references (strings `parse_reference` reads) for every input: glob tags
    become each matching tag the registry lists (sorted); duplicates are dropped, the
    order of the wishlist kept. `list_tags(reference)` is called once per repository."""
    cache: dict[tuple[str | None, str, str], list[str]] = {}
    out: list[str] = []
    seen: set[str] = set()
    for item in wishlist.inputs:
        reference = item.reference
        if reference.has_glob:
            key = (reference.scheme, reference.registry, reference.repository)
            if key not in cache:
                cache[key] = list_tags(reference)
            tags = sorted({tag for tag in cache[key] if reference.matches(tag)})
            if not tags:
                log.warning("%s:%d: no tag of %s matches %r", wishlist.source, item.line,
                            reference.name, reference.tag)
            concrete = [str(reference.with_tag(tag)) for tag in tags]
        else:
            concrete = [str(reference)]
        for text in concrete:
            if text not in seen:
                seen.add(text)
                out.append(text)
    return out


def registry_tags(username: str | None = None, password: str | None = None) -> ListTags:
    """A `list_tags` that asks the reference's registry (API v2 tag list)."""

    def list_tags(reference: ImageReference) -> list[str]:
        with RegistryClient.for_reference(reference, username=username,
                                          password=password) as client:
            return client.list_tags(reference.repository)

    return list_tags


def convert(wishlist_file: Path, options: IngestOptions, *,
            list_tags: ListTags | None = None) -> IngestResult:
    """Load the wishlist, expand it against the registries, ingest every image, publish
    once. The wishlist's `cvmfs_repo` must be the repository `options` publishes."""
    wishlist = load_wishlist(wishlist_file)
    if wishlist.cvmfs_repo != options.publish.fqrn:
        raise WishlistError(f"{wishlist.source}: field 'cvmfs_repo' is {wishlist.cvmfs_repo!r}, "
                            f"but the repository is {options.publish.fqrn!r}")
    lister = list_tags or registry_tags(options.username, options.password)
    references = expand(wishlist, lister)
    options.notify({"action": "wishlist", "wishlist": wishlist.source,
                    "images": len(references)})
    if not references:
        return IngestResult([], None)
    return ingest(references, options)


def loop(wishlist_file: Path, options: IngestOptions, *, interval: float,
         stop: threading.Event | None = None, rounds: int | None = None,
         list_tags: ListTags | None = None,
         on_round: Callable[[int, IngestResult | Exception], None] | None = None,
         ) -> list[IngestResult | Exception]:
    """`convert` every `interval` seconds until `stop` is set or `rounds` rounds ran.
    A failed round (any Exception) is logged, reported and does not end the loop; the
    wishlist is re-read every round (edit it while the loop runs)."""
    stop = stop or threading.Event()
    outcomes: list[IngestResult | Exception] = []
    number = 0
    while not stop.is_set() and (rounds is None or number < rounds):
        number += 1
        outcome: IngestResult | Exception
        try:
            outcome = convert(wishlist_file, options, list_tags=list_tags)
        except Exception as exc:  # a round fails, the loop goes on
            log.error("wishlist round %d failed: %s", number, exc)
            options.notify({"action": "wishlist_round", "round": number, "status": "error",
                            "error": str(exc)})
            outcome = exc
        outcomes.append(outcome)
        if on_round is not None:
            on_round(number, outcome)
        if rounds is not None and number >= rounds:
            break
        stop.wait(interval)
    return outcomes
