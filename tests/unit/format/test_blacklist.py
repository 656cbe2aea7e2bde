"""Blacklists: fingerprint lines read as whitelists read them, `<fqrn N` revision bounds."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from pycvmfs.errors import BlacklistedError
from pycvmfs.format.blacklist import Blacklist, parse_blacklist
from pycvmfs.format.certificates import (
    certificate_fingerprint,
    create_certificate,
    fingerprint_text,
)
from pycvmfs.format.hashes import Algorithm

KEY = rsa.generate_private_key(public_exponent=65537, key_size=1024)
CERT = create_certificate("repo.example.org", KEY)
OTHER = create_certificate("other.example.org",
                           rsa.generate_private_key(public_exponent=65537, key_size=1024))


@pytest.mark.parametrize("algorithm", [Algorithm.SHA1, Algorithm.RIPEMD160])
def test_a_listed_certificate_is_refused(algorithm: Algorithm) -> None:
    line = fingerprint_text(certificate_fingerprint(CERT, algorithm))
    blacklist = parse_blacklist([f"# revoked keys\n{line}  # leaked 2026-11\n"])
    with pytest.raises(BlacklistedError, match="repo.example.org.*is blacklisted"):
        blacklist.check_certificate(CERT, "repo.example.org")
    blacklist.check_certificate(OTHER, "other.example.org")  # not listed: fine


def test_revision_bounds() -> None:
    blacklist = parse_blacklist(["<repo.example.org 5\n", "<repo.example.org\t7\n"
                                 "<other.example.org 3\n<broken x\n<\nnonsense\n"])
    assert dict(blacklist.min_revisions) == {"repo.example.org": 7, "other.example.org": 3}
    with pytest.raises(BlacklistedError, match="revision 6 is blacklisted .*below 7"):
        blacklist.check_revision("repo.example.org", 6)
    blacklist.check_revision("repo.example.org", 7)
    blacklist.check_revision("third.example.org", 1)


def test_empty_blacklist_refuses_nothing() -> None:
    empty = Blacklist()
    empty.check_certificate(CERT, "repo.example.org")
    empty.check_revision("repo.example.org", 1)
    assert parse_blacklist(["", "\n\n"]) == Blacklist()
