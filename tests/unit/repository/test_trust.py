"""`establish_trust`: the signature chain manifest -> certificate -> whitelist -> master key,
run against an in-memory source holding letters signed with the session's test keys. Each
way a letter can be wrong is its own error class, names the repository and the source, and
is found at its step of the reference order (a wrong name or an outdated manifest fetches
nothing more); each download keeps its byte budget."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from pycvmfs.errors import (
    BlacklistedError,
    BudgetExceededError,
    ConfigError,
    FingerprintNotListedError,
    HashMismatchError,
    IntegrityError,
    LetterHashError,
    MissingFieldError,
    NameMismatchError,
    NotFoundError,
    OutdatedError,
    PycvmfsError,
    RootMismatchError,
    SignatureError,
    WhitelistExpiredError,
)
from pycvmfs.format.blacklist import Blacklist, parse_blacklist
from pycvmfs.format.certificates import (
    certificate_fingerprint,
    create_certificate,
    fingerprint_text,
    generate_private_key,
    same_public_key,
)
from pycvmfs.format.compression import make_object
from pycvmfs.format.hashes import Algorithm, ContentHash, Suffix
from pycvmfs.format.manifest import Manifest, sign_manifest
from pycvmfs.format.whitelist import make_whitelist, sign_whitelist
from pycvmfs.publisher.keys import RepositoryKeys, load_keys
from pycvmfs.repository.trust import (
    CERTIFICATE_MAX_BYTES,
    MANIFEST_MAX_BYTES,
    MANIFEST_PATH,
    WHITELIST_PATH,
    TrustedManifest,
    error_context,
    establish_trust,
    key_files,
    load_blacklist,
    load_public_keys,
)
from tests.publish_helpers import Keys

if TYPE_CHECKING:
    from tests.unit.repository.conftest import MemorySource

NOW = dt.datetime(2031, 5, 6, 12, 30, tzinfo=dt.UTC)  # the clock the whitelist is judged by
PUBLISHED = int((NOW - dt.timedelta(hours=1)).timestamp())  # the manifest's T
CONTEXT = "source memory]"


class Chain:
    """A signed repository in a `MemorySource`: certificate object, manifest, whitelist;
    tests re-sign one piece to break exactly that."""

    def __init__(self, keys: RepositoryKeys, source: MemorySource) -> None:
        self.keys, self.source = keys, source
        self.certificate, stored = make_object(keys.certificate_pem)
        self.certificate_path = self.certificate.object_path(Suffix.CERTIFICATE)
        source.files[self.certificate_path] = stored
        self.manifest = Manifest(root_hash=ContentHash.of(Algorithm.SHA1, b"root catalog"),
                                 revision=42, fqrn=keys.fqrn, certificate=self.certificate,
                                 history=ContentHash.of(Algorithm.SHA1, b"history"),
                                 timestamp=PUBLISHED)
        self.publish()
        self.sign_whitelist()

    def publish(self, signing_key: rsa.RSAPrivateKey | None = None, **changes: object) -> None:
        self.manifest = dataclasses.replace(self.manifest, **changes)  # type: ignore[arg-type]
        self.source.files[MANIFEST_PATH] = sign_manifest(
            self.manifest, signing_key or self.keys.signing_key)

    def sign_whitelist(self, *, fqrn: str | None = None,
                       fingerprints: list[ContentHash] | None = None,
                       created: dt.datetime = NOW - dt.timedelta(days=1),
                       days: int = 30, master_key: rsa.RSAPrivateKey | None = None) -> None:
        listed = fingerprints if fingerprints is not None else [
            certificate_fingerprint(self.keys.certificate, Algorithm.SHA1)]
        whitelist = make_whitelist(fqrn or self.keys.fqrn, listed, now=created,
                                   validity=dt.timedelta(days=days))
        master = master_key or self.keys.master_key
        assert master is not None
        self.source.files[WHITELIST_PATH] = sign_whitelist(whitelist, master)

    def trust(self, fqrn: str | None = None, *, now: dt.datetime = NOW,
              min_timestamp: int | None = None, blacklist: Blacklist | None = None
              ) -> TrustedManifest:
        self.source.fetched.clear()
        return establish_trust(self.source, fqrn or self.keys.fqrn, [self.keys.public_key],
                               now=now, min_timestamp=min_timestamp, blacklist=blacklist)


@pytest.fixture(scope="module")
def stranger() -> rsa.RSAPrivateKey:
    """A key nobody trusts (small: generated per module)."""
    return generate_private_key(1024)


@pytest.fixture(scope="module")
def repository_keys(keys: Keys) -> RepositoryKeys:
    """The session's test keys, loaded once (loading checks each private key: slow)."""
    return load_keys(keys.fqrn, keys.keys_dir)


@pytest.fixture
def chain(repository_keys: RepositoryKeys, memory_source: MemorySource) -> Chain:
    return Chain(repository_keys, memory_source)


def test_a_good_chain_is_trusted_in_the_reference_order(chain: Chain) -> None:
    trusted = chain.trust()
    assert trusted.root_hash == chain.manifest.root_hash and trusted.revision == 42
    assert trusted.history == chain.manifest.history and trusted.timestamp == PUBLISHED
    assert trusted.fqrn == chain.keys.fqrn and trusted.source == "memory"
    assert trusted.raw_manifest == chain.source.files[MANIFEST_PATH]
    assert trusted.certificate == chain.keys.certificate
    assert trusted.whitelist.fingerprints == (
        certificate_fingerprint(chain.keys.certificate, Algorithm.SHA1),)
    assert chain.source.fetched == [MANIFEST_PATH, chain.certificate_path, WHITELIST_PATH]
    naive = chain.trust(now=NOW.replace(tzinfo=None))  # naive: taken as UTC
    assert naive.root_hash == trusted.root_hash


def test_a_manifest_signed_by_another_key_is_refused(chain: Chain,
                                                     stranger: rsa.RSAPrivateKey) -> None:
    chain.publish(signing_key=stranger)
    with pytest.raises(SignatureError, match=f"repository {chain.keys.fqrn}, {CONTEXT}"):
        chain.trust()


def test_a_changed_manifest_body_is_refused(chain: Chain) -> None:
    raw = chain.source.files[MANIFEST_PATH]
    chain.source.files[MANIFEST_PATH] = raw.replace(b"S42\n", b"S43\n")
    with pytest.raises(LetterHashError):
        chain.trust()


def test_a_whitelist_signed_by_another_master_key_is_refused(
        chain: Chain, stranger: rsa.RSAPrivateKey) -> None:
    chain.sign_whitelist(master_key=stranger)
    with pytest.raises(SignatureError, match="whitelist .* signature does not verify"):
        chain.trust()


def test_an_expired_whitelist_is_refused_from_its_expiry_hour_on(chain: Chain) -> None:
    chain.sign_whitelist(created=NOW - dt.timedelta(days=3), days=2)
    with pytest.raises(WhitelistExpiredError, match=CONTEXT.replace("]", r"\]")):
        chain.trust()
    expiry = (NOW - dt.timedelta(days=1)).replace(minute=0, second=0)
    assert chain.trust(now=expiry - dt.timedelta(seconds=1)).revision == 42
    with pytest.raises(WhitelistExpiredError):
        chain.trust(now=expiry)


def test_a_certificate_not_on_the_whitelist_is_refused(chain: Chain,
                                                       stranger: rsa.RSAPrivateKey) -> None:
    other = create_certificate(chain.keys.fqrn, stranger)
    chain.sign_whitelist(fingerprints=[certificate_fingerprint(other, Algorithm.SHA1)])
    with pytest.raises(FingerprintNotListedError, match="is not on the whitelist"):
        chain.trust()
    chain.sign_whitelist(fingerprints=[])
    with pytest.raises(FingerprintNotListedError):
        chain.trust()


def test_a_wrong_name_is_refused_before_anything_else_is_fetched(chain: Chain) -> None:
    with pytest.raises(NameMismatchError, match="expected 'other.example.org'"):
        chain.trust("other.example.org")
    assert chain.source.fetched == [MANIFEST_PATH]


def test_a_whitelist_of_another_repository_is_refused(chain: Chain) -> None:
    chain.sign_whitelist(fqrn="other.example.org")
    with pytest.raises(NameMismatchError, match="whitelist"):
        chain.trust()


def test_an_outdated_manifest_is_refused_before_anything_else_is_fetched(chain: Chain
                                                                         ) -> None:
    assert chain.trust(min_timestamp=PUBLISHED).revision == 42
    with pytest.raises(OutdatedError, match="older than the known"):
        chain.trust(min_timestamp=PUBLISHED + 1)
    assert chain.source.fetched == [MANIFEST_PATH]


def test_a_wrong_root_path_hash_is_refused(chain: Chain) -> None:
    chain.publish(root_path_md5="0" * 32)
    with pytest.raises(RootMismatchError):
        chain.trust()


def test_the_certificate_object_is_verified_by_its_hash(chain: Chain) -> None:
    _, other = make_object(b"another certificate")
    chain.source.files[chain.certificate_path] = other
    with pytest.raises(HashMismatchError, match=f"certificate object {chain.certificate_path}"):
        chain.trust()
    del chain.source.files[chain.certificate_path]
    with pytest.raises(NotFoundError, match=CONTEXT.replace("]", r"\]")):
        chain.trust()


def test_a_certificate_over_its_budget_is_refused(chain: Chain) -> None:
    padded = chain.keys.certificate_pem + b"\n" * CERTIFICATE_MAX_BYTES
    digest, stored = make_object(padded)  # small stored, too large inflated
    chain.source.files[digest.object_path(Suffix.CERTIFICATE)] = stored
    chain.publish(certificate=digest)
    with pytest.raises(IntegrityError, match=f"certificate object .* inflates beyond "
                                             f"{CERTIFICATE_MAX_BYTES} bytes"):
        chain.trust()


def test_alternative_paths_fetch_the_certificate_beside_the_manifest(chain: Chain) -> None:
    stored = chain.source.files.pop(chain.certificate_path)
    alt = chain.certificate.alt_path(Suffix.CERTIFICATE)
    chain.source.files[alt] = stored
    with pytest.raises(NotFoundError):
        chain.trust()
    chain.publish(alt_paths=True)
    assert chain.trust().revision == 42
    assert chain.source.fetched == [MANIFEST_PATH, alt, WHITELIST_PATH]


def test_a_manifest_without_a_certificate_is_refused(chain: Chain) -> None:
    chain.publish(certificate=None)
    with pytest.raises(MissingFieldError, match="no certificate hash"):
        chain.trust()


def test_missing_letters_are_not_found(chain: Chain) -> None:
    del chain.source.files[WHITELIST_PATH]
    with pytest.raises(NotFoundError):
        chain.trust()
    del chain.source.files[MANIFEST_PATH]
    with pytest.raises(NotFoundError):
        chain.trust()


def test_an_endless_manifest_is_cut_at_its_budget(chain: Chain) -> None:
    chain.source.files[MANIFEST_PATH] += b"x" * MANIFEST_MAX_BYTES
    with pytest.raises(BudgetExceededError):
        chain.trust()


def test_blacklisted_certificates_and_revisions_are_refused(chain: Chain) -> None:
    fingerprint = certificate_fingerprint(chain.keys.certificate, Algorithm.SHA1)
    fqrn = chain.keys.fqrn
    with pytest.raises(BlacklistedError, match="is blacklisted"):
        chain.trust(blacklist=parse_blacklist([fingerprint_text(fingerprint) + "\n"]))
    with pytest.raises(BlacklistedError, match="revision 42 is blacklisted"):
        chain.trust(blacklist=parse_blacklist([f"<{fqrn} 43\n"]))
    assert chain.trust(blacklist=parse_blacklist([f"<{fqrn} 42\n"])).revision == 42


def test_no_public_keys_is_a_configuration_error(chain: Chain) -> None:
    with pytest.raises(ConfigError, match="no public keys"):
        establish_trust(chain.source, chain.keys.fqrn, [], now=NOW)
    assert chain.source.fetched == []


def test_error_context_keeps_the_class_and_names_the_repository(
        memory_source: MemorySource) -> None:
    with pytest.raises(OutdatedError) as info, \
            error_context("r.example.org", memory_source, "root catalog X"):
        raise OutdatedError("too old")
    assert str(info.value) == "root catalog X: too old [repository r.example.org, source memory]"
    assert isinstance(info.value.__cause__, OutdatedError)

    class TwoArgumentsError(PycvmfsError):
        def __init__(self, message: str, code: int) -> None:
            super().__init__(message)
            self.code = code

    with pytest.raises(TwoArgumentsError) as odd, error_context("r", memory_source):
        raise TwoArgumentsError("kept as it is", 7)
    assert odd.value.code == 7 and str(odd.value) == "kept as it is"
    with pytest.raises(ValueError, match="^not ours$"), error_context("r", memory_source):
        raise ValueError("not ours")


def test_key_files_and_public_keys(tmp_path: Path, keys: Keys,
                                   repository_keys: RepositoryKeys) -> None:
    (tmp_path / "b.pub").write_bytes(keys.public_key_file.read_bytes())
    (tmp_path / "a.pub").write_bytes(keys.public_key_file.read_bytes())
    (tmp_path / "notes.txt").write_text("not a key")
    assert key_files([tmp_path]) == [tmp_path / "a.pub", tmp_path / "b.pub"]
    assert key_files([tmp_path / "notes.txt"]) == [tmp_path / "notes.txt"]
    with pytest.raises(ConfigError, match="no such file or directory"):
        key_files([tmp_path / "missing.pub"])
    loaded = load_public_keys([keys.public_key_file])
    assert len(loaded) == 1 and same_public_key(loaded[0], repository_keys.public_key)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"no public keys \(\*\.pub\) found in .*empty"):
        load_public_keys([tmp_path / "empty"])
    with pytest.raises(ConfigError, match="no location given"):
        load_public_keys([])


def test_blacklist_files_that_do_not_exist_revoke_nothing(tmp_path: Path) -> None:
    listed = tmp_path / "blacklist"
    listed.write_text("<r.example.org 5\n# comment\n")
    blacklist = load_blacklist([tmp_path / "missing", listed])
    assert blacklist.min_revisions == {"r.example.org": 5} and not blacklist.fingerprints
    assert load_blacklist([tmp_path / "missing"]).min_revisions == {}
