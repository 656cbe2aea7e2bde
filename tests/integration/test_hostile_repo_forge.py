"""The test forge (tests/hostile_repo.py) makes repositories that pass the whole trust chain
and say exactly what the forge was told: the hostile-repository tests of issue 9 rely on
both halves."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from pycvmfs.errors import CatalogError, HashMismatchError, PycvmfsError
from pycvmfs.format.catalog import encode_hardlinks
from pycvmfs.format.hashes import Algorithm
from pycvmfs.format.whitelist import parse_whitelist
from pycvmfs.repository.repository import Repository
from tests.hostile_repo import ForgeError, RepositoryForge
from tests.publish_helpers import Keys, make_full_tree, open_repository, run_publish

NESTED = ("/nested", "/nested/deeper/leaf", "/releases/r1", "/releases/r2")


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Path:
    base = tmp_path_factory.mktemp("forge-published")
    run_publish(make_full_tree(base / "src"), base / "repo", keys)
    return base


@pytest.fixture()
def storage(published: Path, tmp_path: Path) -> Path:
    """A private copy of the published repository (the forge writes into it)."""
    shutil.copytree(published / "repo", tmp_path / "repo", symlinks=True)
    return tmp_path / "repo"


def _all_statistics(repo: Repository) -> dict[str, dict[str, int]]:
    out = {"": repo.tree.root.statistics()}
    for mountpoint in NESTED:
        out[mountpoint] = repo.tree.listing_catalog(mountpoint,
                                                    repo.resolve(mountpoint)).statistics()
    return out


def test_a_rewrite_without_changes_keeps_rows_and_statistics(storage: Path, keys: Keys) -> None:
    with open_repository(storage, keys) as repo:
        before_revision = repo.manifest.revision if repo.manifest else 0
        before_stats = _all_statistics(repo)
        before_walk = list(repo.walk())
    with RepositoryForge(storage, keys) as forge:
        old_leaf = forge.catalog_hash("/nested/deeper/leaf")
        with forge.catalog("/nested/deeper/leaf"):
            pass  # recounted, digest dropped: a new object all the same
        assert forge.catalog_hash("/nested/deeper/leaf") != old_leaf
    with open_repository(storage, keys) as repo:
        assert repo.manifest is not None
        assert repo.manifest.revision == before_revision + 1
        assert repo.revision == repo.manifest.revision  # root catalog property follows
        assert _all_statistics(repo) == before_stats
        assert list(repo.walk()) == before_walk
        assert repo.read("/nested/deeper/leaf/x") == b"grandchild catalog\n"
        trunk = next(tag for tag in repo.tags() if tag.name == "trunk")
        assert trunk.hash == str(repo.root_hash)
        assert trunk.revision == repo.revision


def test_a_changed_size_is_served_as_signed_and_the_bytes_are_refused(
        storage: Path, keys: Keys) -> None:
    with RepositoryForge(storage, keys) as forge:
        forge.update_row("/nested/deeper/file", size=5)
    with open_repository(storage, keys) as repo:  # the trust chain passes
        assert repo.lookup("/nested/deeper/file").size == 5
        with pytest.raises(PycvmfsError):
            repo.read("/nested/deeper/file")


def test_parents_reference_the_new_catalog_with_its_size_and_counters(
        storage: Path, keys: Keys) -> None:
    with open_repository(storage, keys) as repo:
        before = _all_statistics(repo)
    with RepositoryForge(storage, keys) as forge:
        with forge.catalog("/nested/deeper/leaf") as db:
            db.execute("DELETE FROM catalog WHERE name = 'x'")
        leaf = forge.catalog_hash("/nested/deeper/leaf")
        ref_hash, ref_size = forge.nested_refs("/nested")["/nested/deeper/leaf"]
        assert (ref_hash, ref_size) == (leaf, forge.catalog_size(leaf))
    with open_repository(storage, keys) as repo:
        assert "x" not in [name for name, _ in repo.listdir("/nested/deeper/leaf")]
        after = _all_statistics(repo)
    assert after["/nested/deeper/leaf"]["self_regular"] == \
        before["/nested/deeper/leaf"]["self_regular"] - 1
    for mountpoint in ("/nested", ""):
        assert after[mountpoint]["subtree_regular"] == \
            before[mountpoint]["subtree_regular"] - 1
        assert after[mountpoint]["subtree_file_size"] == \
            before[mountpoint]["subtree_file_size"] - len(b"grandchild catalog\n")


def test_nested_refs_may_point_anywhere(storage: Path, keys: Keys) -> None:
    with RepositoryForge(storage, keys) as forge:
        nested = forge.catalog_hash("/nested")
        forge.nested_ref("/nested", "/nested")  # itself, at its own mountpoint
        root_before = forge.root_hash
        forge.nested_ref("", "")  # the root lists a catalog at '': itself as it was
        assert forge.nested_refs("")[""][0] == root_before
        forge.nested_ref("/nested/deeper/leaf", "/releases", forge.root_hash, size=7)
        refs = forge.nested_refs("/nested")
        assert refs["/nested"] == (nested, forge.catalog_size(nested))
        assert forge.nested_refs("/nested/deeper/leaf")["/releases"][1] == 7
    with open_repository(storage, keys) as repo:  # signed and trusted all the same
        assert "" in repo.tree.root.broken_refs()  # written, and refused by the reader
        assert repo.read("/plain.txt") == b"plain text\n"


def test_a_swapped_nested_catalog_is_refused_by_root_prefix(storage: Path, keys: Keys) -> None:
    with RepositoryForge(storage, keys) as forge:
        forge.swap_catalog("/nested", forge.root_hash)
        assert forge.catalog_hash("/nested") == forge.nested_refs("")["/nested"][0]
    with open_repository(storage, keys) as repo, pytest.raises(CatalogError, match="root_prefix"):
        repo.listdir("/nested")


def test_a_bulk_directory_lists_every_entry(storage: Path, keys: Keys) -> None:
    with open_repository(storage, keys) as repo:
        before = _all_statistics(repo)
        links = repo.lookup("/nested").linkcount
    started = time.monotonic()
    with RepositoryForge(storage, keys) as forge:
        forge.add_entries("/nested", "/nested/huge", 10_000, "e{:05d}", content=b"same\n")
    assert time.monotonic() - started < 10
    with open_repository(storage, keys) as repo:
        names = [name for name, _ in repo.listdir("/nested/huge")]
        assert len(names) == 10_000
        assert names[0] == "e00000" and names[-1] == "e09999"
        assert repo.read("/nested/huge/e04242") == b"same\n"
        assert repo.lookup("/nested/huge/e09999").size == 5
        assert repo.lookup("/nested").linkcount == links + 1  # the parent's mountpoint row
        nested_root = repo.tree.listing_catalog("/nested", repo.resolve("/nested")) \
            .lookup("/nested")
        assert nested_root is not None and nested_root.linkcount == links + 1
        huge = repo.tree.listing_catalog("/nested", repo.resolve("/nested"))
        own = huge.statistics()
        assert huge.max_rowid() == sum(own[f"self_{kind}"]  # one row each, none replaced
                                       for kind in ("regular", "dir", "symlink", "special"))
        after = _all_statistics(repo)
    for counter, grown in (("self_regular", 10_000), ("self_dir", 1),
                           ("self_file_size", 50_000)):
        assert after["/nested"][counter] == before["/nested"][counter] + grown
        subtree = counter.replace("self_", "subtree_")
        assert after[""][subtree] == before[""][subtree] + grown


def test_properties_ttl_zero(storage: Path, keys: Keys) -> None:
    with RepositoryForge(storage, keys) as forge:
        forge.set_property("", "TTL", 0)
    with open_repository(storage, keys) as repo:
        assert repo.tree.root.ttl == 0


def test_a_hardlink_group_of_unlike_entries(storage: Path, keys: Keys) -> None:
    members = ["/plain.txt", "/link-rel", "/exec.sh"]
    with RepositoryForge(storage, keys) as forge:
        forge.hardlink_group("", members, 7)
        with pytest.raises(ForgeError, match="no row"):
            forge.hardlink_group("", ["/nested/deeper/file"], 8)
    with open_repository(storage, keys) as repo:
        for path in members:
            entry = repo.lookup(path)
            assert (entry.hardlink_group, entry.linkcount) == (7, 3)
    assert encode_hardlinks(7, 3) == (7 << 32) | 3


def test_raw_object_tampering(storage: Path, keys: Keys) -> None:
    with RepositoryForge(storage, keys) as forge:
        plain = forge.entry("/plain.txt").content_hash
        medium = forge.entry("/medium.bin").content_hash
        assert plain is not None and medium is not None
        forge.truncate_object(plain, "", 10)
        forge.replace_object(medium, "", b"not zlib at all")
        assert forge.object_path(plain).stat().st_size == 10
    with open_repository(storage, keys) as repo:
        for path in ("/plain.txt", "/medium.bin"):
            with pytest.raises(HashMismatchError):
                repo.read(path)


def test_explicit_revision_timestamp_and_a_resigned_whitelist(storage: Path, keys: Keys) -> None:
    old_whitelist = (storage / ".cvmfswhitelist").read_bytes()
    forge = RepositoryForge(storage, keys)
    try:
        forge.set_property("", "TTL", 60)
        manifest = forge.publish(revision=42, timestamp=1_800_000_000, resign_whitelist=True)
        assert (manifest.revision, manifest.timestamp) == (42, 1_800_000_000)
        nested = forge.catalog_hash("/nested")
        forge.publish(revision=43, root=nested)  # a nested catalog as the root
    finally:
        forge.close()
    assert (storage / ".cvmfswhitelist").read_bytes() != old_whitelist
    parse_whitelist((storage / ".cvmfswhitelist").read_bytes())
    with pytest.raises(CatalogError, match="nested catalog"):
        open_repository(storage, keys)


def test_a_publish_after_forging_writes_clean_catalogs(storage: Path, published: Path,
                                                       keys: Keys) -> None:
    with RepositoryForge(storage, keys) as forge:
        forge.update_row("/nested/deeper/file", size=5)
    run_publish(published / "src", storage, keys)
    with open_repository(storage, keys) as repo:
        assert repo.read("/nested/deeper/file") == b"inside a nested catalog\n"


def test_unknown_mountpoints_and_columns_are_named(storage: Path, keys: Keys) -> None:
    forge = RepositoryForge(storage, keys)
    try:
        with pytest.raises(ForgeError, match="no catalog is mounted at '/nowhere'"):
            forge.catalog_hash("/nowhere")
        with pytest.raises(ForgeError, match="columns"):
            forge.update_row("/plain.txt", colour="red")
        with pytest.raises(ForgeError, match="no object"):
            forge.truncate_object("0" * 40, "", 1)
    finally:
        forge.close()


def test_the_repository_hash_algorithm_is_kept(tmp_path: Path, keys: Keys) -> None:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / ".cvmfscatalog").write_bytes(b"")
    (source / "sub" / "f").write_text("f\n")
    run_publish(source, tmp_path / "repo", keys, algorithm=Algorithm.SHAKE128, chunking=None)
    with RepositoryForge(tmp_path / "repo", keys) as forge:
        forge.add_entries("/sub", "/sub", 100, content=b"z")
        forge.set_property("", "TTL", 0)
        assert forge.catalog_hash("/sub").algorithm is Algorithm.SHAKE128
    with open_repository(tmp_path / "repo", keys) as repo:
        assert repo.root_hash.algorithm is Algorithm.SHAKE128
        assert len(repo.listdir("/sub")) == 102  # .cvmfscatalog, f and the 100
        assert repo.read("/sub/f0000099") == b"z"
        assert repo.tree.root.ttl == 0

