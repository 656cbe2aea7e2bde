"""DUCC v1 wishlists: parsing (errors name line and field), glob expansion, the loop."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from pycvmfs.images.ingest import IngestOptions, IngestResult
from pycvmfs.images.reference import ImageReference
from pycvmfs.images.wishlist import (
    WishlistError,
    convert,
    expand,
    load_wishlist,
    loop,
    parse_wishlist,
)
from pycvmfs.publisher.publish import PublishOptions

EXAMPLE = """\
version: 1
user: example-bot
cvmfs_repo: images.example.org
output_format: '$(scheme)://registry.example.org/thin/$(image)'
input:
  - 'https://registry.hub.docker.com/library/alpine:3.19'
  - 'https://ghcr.io/example/tools:v2.*'
  - 'centos:centos7'
  - '127.0.0.1:5000/ns/debian:v*'
"""


def test_parse_the_fact_sheet_example() -> None:
    wishlist = parse_wishlist(EXAMPLE, source="w.yaml")
    assert wishlist.version == 1 and wishlist.user == "example-bot"
    assert wishlist.cvmfs_repo == "images.example.org"
    assert wishlist.output_format == "$(scheme)://registry.example.org/thin/$(image)"
    assert [item.line for item in wishlist.inputs] == [6, 7, 8, 9]
    alpine, tools, centos, local = (item.reference for item in wishlist.inputs)
    assert alpine.public_path() == "registry.hub.docker.com/library/alpine:3.19"
    assert tools.registry == "ghcr.io" and tools.tag == "v2.*" and tools.has_glob
    assert centos.public_path() == "registry.hub.docker.com/library/centos:centos7"
    assert local.registry == "127.0.0.1:5000" and local.has_glob


def test_output_format_and_user_are_optional() -> None:
    wishlist = parse_wishlist("version: 1\ncvmfs_repo: r.org\ninput: [a.io/b/c:1]\n")
    assert wishlist.user is None and wishlist.output_format is None
    assert wishlist.inputs[0].reference.public_path() == "a.io/b/c:1"


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty wishlist"),
    ("- a\n- b\n", ":1: the wishlist must be a mapping"),
    ("version: 1\ncvmfs_repo: r\ninput: [x]\n  bad: [\n", "not valid YAML"),
    ("cvmfs_repo: r\ninput: [a/b]\n", "missing required field 'version'"),
    ("version: 2\ncvmfs_repo: r\ninput: [a/b]\n", ":1: field 'version': unsupported"),
    ("version: '1'\ncvmfs_repo: r\ninput: [a/b]\n", ":1: field 'version'"),
    ("version: true\ncvmfs_repo: r\ninput: [a/b]\n", ":1: field 'version'"),
    ("version: 1\ninput: [a/b]\n", "missing required field 'cvmfs_repo'"),
    ("version: 1\ncvmfs_repo: [x]\ninput: [a/b]\n", ":2: field 'cvmfs_repo'"),
    ("version: 1\ncvmfs_repo: r\n", "missing required field 'input'"),
    ("version: 1\ncvmfs_repo: r\ninput: a/b\n", ":3: field 'input' must be a list"),
    ("version: 1\ncvmfs_repo: r\ninput: []\n", "lists no images"),
    ("version: 1\ncvmfs_repo: r\ninput:\n  - a/b:1\n  - 42\n", ":5: field 'input': expected"),
    ("version: 1\ncvmfs_repo: r\ninput:\n  - a/b:1\n  - 'Bad/Name:1'\n",
     ":5: field 'input': invalid repository component"),
    ("version: 1\ncvmfs_repo: r\ninput:\n  - 'oci:/tmp/x:t'\n", ":4: field 'input'"),
    ("version: 1\ncvmfs_repo: r\ninput:\n  - 'a.io/b:v*@sha256:" + "a" * 64 + "'\n",
     "cannot be pinned"),
    ("version: 1\ncvmfs_repo: r\ninput: [a/b]\nuser: [x]\n", ":4: field 'user'"),
    ("version: 1\ncvmfs_repo: r\ninput: [a/b]\ncolour: red\n", ":4: unknown field 'colour'"),
    ("version: 1\nversion: 1\ncvmfs_repo: r\ninput: [a/b]\n", ":2: field 'version' given twice"),
])
def test_errors_name_line_and_field(text: str, message: str) -> None:
    with pytest.raises(WishlistError) as caught:
        parse_wishlist(text, source="w.yaml")
    assert message in str(caught.value)
    assert str(caught.value).startswith("w.yaml")


def test_load_wishlist_errors(tmp_path: Path) -> None:
    with pytest.raises(WishlistError, match="cannot read"):
        load_wishlist(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"version: 1\xff\n")
    with pytest.raises(WishlistError, match="not UTF-8"):
        load_wishlist(bad)


def test_expand_globs_against_the_tag_list() -> None:
    wishlist = parse_wishlist(
        "version: 1\ncvmfs_repo: r\ninput:\n"
        "  - '127.0.0.1:5000/ns/debian:v*'\n"
        "  - '127.0.0.1:5000/ns/debian:v1'\n"          # duplicate of an expansion
        "  - 'https://ghcr.io/ex/tools:2.*-slim'\n"
        "  - 'ghcr.io/ex/none:z*'\n"                    # matches nothing
        "  - 'ghcr.io/ex/pinned@sha256:" + "b" * 64 + "'\n")
    tags = {"ns/debian": ["x", "v2", "v1", "latest", "av1"],
            "ex/tools": ["2.1-slim", "2.1", "3.0-slim", "2.10-slim"],
            "ex/none": ["a"]}
    calls: list[ImageReference] = []

    def list_tags(reference: ImageReference) -> list[str]:
        calls.append(reference)
        return tags[reference.repository]

    assert expand(wishlist, list_tags) == [
        "docker://127.0.0.1:5000/ns/debian:v1",
        "docker://127.0.0.1:5000/ns/debian:v2",
        "https://ghcr.io/ex/tools:2.1-slim",
        "https://ghcr.io/ex/tools:2.10-slim",
        "docker://ghcr.io/ex/pinned@sha256:" + "b" * 64,
    ]
    assert [c.repository for c in calls] == ["ns/debian", "ex/tools", "ex/none"]


def _options(tmp_path: Path, fqrn: str = "r.org") -> IngestOptions:
    return IngestOptions(PublishOptions(fqrn, tmp_path / "work", tmp_path / "storage",
                                        tmp_path / "keys"))


def test_convert_refuses_another_repository(tmp_path: Path) -> None:
    wishlist = tmp_path / "w.yaml"
    wishlist.write_text("version: 1\ncvmfs_repo: other.org\ninput: [a.io/b:1]\n")
    with pytest.raises(WishlistError, match="'cvmfs_repo' is 'other.org'"):
        convert(wishlist, _options(tmp_path), list_tags=lambda r: [])


def test_convert_with_nothing_to_ingest(tmp_path: Path) -> None:
    wishlist = tmp_path / "w.yaml"
    wishlist.write_text("version: 1\ncvmfs_repo: r.org\ninput: ['a.io/b:v*']\n")
    result = convert(wishlist, _options(tmp_path), list_tags=lambda r: ["x"])
    assert result == IngestResult([], None)


def test_loop_runs_rounds_and_survives_failures(tmp_path: Path) -> None:
    wishlist = tmp_path / "w.yaml"
    wishlist.write_text("version: 1\ncvmfs_repo: r.org\ninput: ['a.io/b:v*']\n")
    answers: list[Exception | list[str]] = [RuntimeError("registry down"), ["x"], ["y"]]

    def list_tags(reference: ImageReference) -> list[str]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    seen: list[int] = []
    outcomes = loop(wishlist, _options(tmp_path), interval=0.01, rounds=3,
                    list_tags=list_tags, on_round=lambda n, o: seen.append(n))
    assert seen == [1, 2, 3]
    assert isinstance(outcomes[0], RuntimeError)
    assert outcomes[1:] == [IngestResult([], None)] * 2


def test_loop_stops_on_the_event_while_waiting(tmp_path: Path) -> None:
    wishlist = tmp_path / "w.yaml"
    wishlist.write_text("version: 1\ncvmfs_repo: r.org\ninput: ['a.io/b:v*']\n")
    stop = threading.Event()
    timer = threading.Timer(0.2, stop.set)  # set while the loop waits out its interval

    started = time.monotonic()
    outcomes = loop(wishlist, _options(tmp_path), interval=30, stop=stop,
                    list_tags=lambda r: [], on_round=lambda n, o: timer.start())
    assert len(outcomes) == 1 and time.monotonic() - started < 10
