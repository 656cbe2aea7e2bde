"""Blacklists (fact sheet 3.4 step 7): revoked signing certificates and revisions.

A blacklist file (`/etc/cvmfs/blacklist` for the reference client) holds, one per line,
certificate fingerprints in whitelist form (`AB:CD:...`, read as whitelists read them) and
`<fqrn N` lines: every revision of `fqrn` below N is refused. Anything else is ignored, as
the reference does. A repository signed with a blacklisted certificate, or a revision below
its bound, must not be mounted, whatever else verifies.

Pure: parsing and the check; reading the files is the caller's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pycvmfs.errors import BlacklistedError
from pycvmfs.format.certificates import (
    Certificate,
    certificate_fingerprint,
    fingerprint_text,
    parse_fingerprint,
)
from pycvmfs.format.hashes import ContentHash


@dataclass(frozen=True, slots=True)
class Blacklist:
    fingerprints: frozenset[ContentHash] = frozenset()
    min_revisions: Mapping[str, int] = field(default_factory=dict)  # fqrn -> first allowed

    def check_certificate(self, certificate: Certificate, fqrn: str) -> None:
        """BlacklistedError when the certificate's fingerprint (in the algorithm of any
        listed one) is on the blacklist."""
        for listed in self.fingerprints:
            if certificate_fingerprint(certificate, listed.algorithm) == listed:
                raise BlacklistedError(f"repository {fqrn}: its certificate "
                                       f"{fingerprint_text(listed)} is blacklisted")

    def check_revision(self, fqrn: str, revision: int) -> None:
        """BlacklistedError when `revision` of `fqrn` is below its `<fqrn N` bound."""
        bound = self.min_revisions.get(fqrn)
        if bound is not None and revision < bound:
            raise BlacklistedError(f"repository {fqrn}: revision {revision} is blacklisted "
                                   f"(revisions below {bound} are refused)")


def parse_blacklist(texts: Iterable[str]) -> Blacklist:
    """One Blacklist from the text of every blacklist file (bounds: the highest wins)."""
    fingerprints: set[ContentHash] = set()
    bounds: dict[str, int] = {}
    for text in texts:
        for raw in text.splitlines():
            line = raw.strip()
            if line.startswith("<"):
                parts = line[1:].split()
                if len(parts) == 2 and parts[1].isdigit():
                    bounds[parts[0]] = max(bounds.get(parts[0], 0), int(parts[1]))
                continue
            found = parse_fingerprint(line)
            if found is not None:
                fingerprints.add(found)
    return Blacklist(frozenset(fingerprints), bounds)
