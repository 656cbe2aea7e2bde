"""File bundle specs: names, the document the reference writes, and every refusal."""

from __future__ import annotations

import json

import pytest

from pycvmfs.format import bundles
from pycvmfs.format.bundles import BundleSpecError, parse_spec, render_spec


def _doc(dependencies: object, **fields: object) -> bytes:
    document = {"name": "CVMFS_BUNDLE", "version": "1.0.0", "encoding": "UTF-8",
                "dependencies": dependencies, **fields}
    return json.dumps(document).encode()


def test_names() -> None:
    assert bundles.SPEC_PREFIX == ".cvmfsbundle-"
    assert bundles.spec_name("libfoo.so") == ".cvmfsbundle-libfoo.so"
    assert bundles.trigger_of(".cvmfsbundle-libfoo.so") == "libfoo.so"
    assert bundles.trigger_of(".cvmfsbundle-.cvmfsbundle-x") == ".cvmfsbundle-x"
    for name in ("libfoo.so", ".cvmfsbundle.libfoo.so", ".cvmfsbundle-", ".cvmfsbundle-.."):
        assert bundles.trigger_of(name) is None
    for name in ("", "a/b", ".", "..", "a\0b"):
        with pytest.raises(BundleSpecError):
            bundles.spec_name(name)


def test_render_is_the_reference_document() -> None:
    data = render_spec(["/lib/a.so", "b.so", "/lib/a.so"])
    assert json.loads(data) == {"name": "CVMFS_BUNDLE", "version": "1.0.0",
                                "encoding": "UTF-8", "dependencies": ["/lib/a.so", "b.so"]}
    assert data.endswith(b"\n")


def test_round_trip_resolves_relative_paths() -> None:
    data = render_spec(["/dep1.txt", "./dep2.txt", "sub/../dep3", "../up/x", "/a//b/./c"])
    assert parse_spec(data, "/dir/sub") == [
        "/dep1.txt", "/dir/sub/dep2.txt", "/dir/sub/dep3", "/dir/up/x", "/a/b/c"]


def test_root_spec_and_duplicates() -> None:
    data = render_spec(["/dep1.txt", "./dep2.txt", "dep1.txt"])
    assert parse_spec(data, "") == ["/dep1.txt", "/dep2.txt"]
    assert parse_spec(data, "/") == ["/dep1.txt", "/dep2.txt"]
    assert parse_spec(_doc([]), "/d") == []


def test_header_lines_are_skipped() -> None:
    data = b"#%CVMFS_BUNDLE version=1 encoding=UTF-8\n# another\n" + _doc(["/x"])
    assert parse_spec(data, "") == ["/x"]


@pytest.mark.parametrize(("data", "cause"), [
    (b"\xff\xfe", "not UTF-8"),
    (b"{", "not JSON"),
    (b"[]", "not a JSON object"),
    (_doc(["/x"], name="OTHER"), "\"name\""),
    (_doc(["/x"], version="2.0.0"), "\"version\""),
    (_doc(["/x"], version=1), "\"version\""),
    (_doc(["/x"], encoding="latin-1"), "\"encoding\""),
    (_doc("/x"), "no \"dependencies\" list"),
    (json.dumps({"name": "CVMFS_BUNDLE", "version": "1.0.0"}).encode(), "no \"dependencies\""),
    (_doc([1]), "int, not a path"),
    (_doc([None]), "NoneType, not a path"),
    (_doc([""]), "is empty"),
    (_doc(["/a\0b"]), "NUL"),
    (_doc(["/"]), "repository root"),
    (_doc(["../../x"]), "leaves the repository"),
    (_doc(["/../x"]), "leaves the repository"),
    (_doc(["a/../../../x"]), "leaves the repository"),
    (_doc(["/" + "a" * 5000]), "longer than"),
])
def test_refusals_name_the_cause(data: bytes, cause: str) -> None:
    with pytest.raises(BundleSpecError) as info:
        parse_spec(data, "/d")
    assert cause in str(info.value)


def test_bounds() -> None:
    with pytest.raises(BundleSpecError, match="over the"):
        parse_spec(b" " * (bundles.MAX_SPEC_BYTES + 1), "")
    with pytest.raises(BundleSpecError, match="over the limit"):
        parse_spec(_doc(["/x"] * (bundles.MAX_DEPENDENCIES + 1)), "")
    with pytest.raises(BundleSpecError, match="at most"):
        render_spec([f"/f{i}" for i in range(bundles.MAX_DEPENDENCIES + 1)])
    with pytest.raises(BundleSpecError, match="not a path"):
        render_spec([b"/x"])  # type: ignore[list-item]
    with pytest.raises(BundleSpecError, match="leaves"):
        parse_spec(_doc(["x"]), "/../d")


def test_deeply_nested_json_is_a_spec_error() -> None:
    with pytest.raises(BundleSpecError):
        parse_spec(b"[" * 5000 + b"]" * 5000, "")
