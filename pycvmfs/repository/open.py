"""The one way to build a `Repository`: verify the trust chain, choose the root catalog a
`RevisionSelector` names, attach it through an object loader.

Used by the no-FUSE reader (`pycvmfs ls | cat | stat`, a temporary store), by a mount
(`client.open_client`, through `repository.revisions.RevisionSource`, with the mount's
cache) and by the publisher's checks. Order: trust (`trust.establish_trust`: whitelist,
certificate, manifest, blacklist) -> root catalog (the manifest's, a tag's from the history
database, the newest trunk tag at a date, or a given hash) -> catalog tree.
"""

from __future__ import annotations

import datetime as dt
import enum
import os
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import rsa

from pycvmfs.errors import CatalogError, ConfigError
from pycvmfs.format.blacklist import Blacklist
from pycvmfs.format.hashes import ContentHash
from pycvmfs.format.history import Tag
from pycvmfs.repository.catalog_tree import CatalogTree
from pycvmfs.repository.history import History
from pycvmfs.repository.objects import MAX_CATALOG_BYTES, ObjectLoader, temporary_loader
from pycvmfs.repository.repository import Repository
from pycvmfs.repository.source import ObjectSource
from pycvmfs.repository.trust import TrustedManifest, establish_trust


class Selects(enum.Enum):
    TRUNK = "trunk"  # the manifest's root catalog, following newer revisions
    TAG = "tag"  # a named tag of the history database
    DATE = "date"  # the newest trunk tag published at or before a moment
    ROOT_HASH = "root hash"  # a given root catalog


@dataclass(frozen=True, slots=True)
class RevisionSelector:
    """Which root catalog to read: one of trunk, a tag, a date or a root hash. Anything but
    the trunk is fixed: a mount never moves away from it."""

    kind: Selects = Selects.TRUNK
    tag: str = ""
    timestamp: int = 0
    root_hash: ContentHash | None = None

    @classmethod
    def of(cls, *, tag: str | None = None, date: str | None = None,
           root_hash: ContentHash | str | None = None) -> RevisionSelector:
        """From the options that name a revision (`--tag`, `CVMFS_REPOSITORY_TAG`,
        `CVMFS_REPOSITORY_DATE`, `CVMFS_ROOT_HASH`); at most one may be given."""
        if sum(x is not None for x in (tag, date, root_hash)) > 1:
            raise ConfigError("give at most one of a tag, a date and a root hash")
        if tag is not None:
            return cls(Selects.TAG, tag=tag)
        if date is not None:
            return cls(Selects.DATE, timestamp=parse_repository_date(date))
        if isinstance(root_hash, str):
            try:
                root_hash = ContentHash.parse(root_hash)
            except ValueError as exc:
                raise ConfigError(f"root hash: {exc}") from None
        if root_hash is not None:
            return cls(Selects.ROOT_HASH, root_hash=root_hash)
        return cls()

    @property
    def fixed(self) -> bool:
        return self.kind is not Selects.TRUNK

    def choose(self, trusted: TrustedManifest | None,
               history: History) -> tuple[ContentHash, Tag | None]:
        """The root catalog hash and the tag it comes from (None unless a tag or date)."""
        tag = (history.tag(self.tag) if self.kind is Selects.TAG
               else history.tag_at(self.timestamp) if self.kind is Selects.DATE
               else None)
        if tag is not None:
            try:
                return ContentHash.parse(tag.hash), tag
            except ValueError:
                raise CatalogError(f"tag {tag.name}: bad root hash {tag.hash!r}") from None
        if self.root_hash is not None:
            return self.root_hash, None
        assert trusted is not None  # attach_repository refuses an untrusted trunk first
        return trusted.root_hash, None


TRUNK = RevisionSelector()


def parse_repository_date(text: str) -> int:
    """`CVMFS_REPOSITORY_DATE` (`YYYY-MM-DDTHH:MM:SSZ`, UTC) as a Unix timestamp."""
    try:
        moment = dt.datetime.strptime(text.strip(), "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        raise ConfigError(f"repository date {text!r}: expected YYYY-MM-DDTHH:MM:SSZ") from None
    return int(moment.replace(tzinfo=dt.UTC).timestamp())


def open_repository(
    source: ObjectSource,
    fqrn: str,
    public_keys: Sequence[rsa.RSAPublicKey],
    selector: RevisionSelector = TRUNK,
    *,
    loader: ObjectLoader | None = None,
    now: dt.datetime | None = None,
    min_timestamp: int | None = None,
    blacklist: Blacklist | None = None,
    workdir: str | os.PathLike[str] | None = None,
    max_catalog_bytes: int = MAX_CATALOG_BYTES,
) -> Repository:
    """Verify the trust chain, choose the root catalog and attach it.

    `now` (default: current UTC) decides whitelist expiry; `min_timestamp` rejects a
    manifest published before it (OutdatedError); `blacklist` revokes certificates and
    revisions (BlacklistedError). With a root hash the manifest is still verified: it proves
    the source serves this repository. Without a `loader` (a mount passes its cache's),
    objects go to a temporary store in a fresh directory inside `workdir` (default: the
    system temporary directory), removed on close; `max_catalog_bytes` caps the inflated
    size of its catalogs and histories."""
    trusted = establish_trust(source, fqrn, public_keys, now=now or dt.datetime.now(dt.UTC),
                              min_timestamp=min_timestamp, blacklist=blacklist)
    return attach_repository(source, fqrn, trusted, selector, loader=loader, workdir=workdir,
                             max_catalog_bytes=max_catalog_bytes)


def attach_repository(
    source: ObjectSource,
    fqrn: str,
    trusted: TrustedManifest | None,
    selector: RevisionSelector = TRUNK,
    *,
    loader: ObjectLoader | None = None,
    workdir: str | os.PathLike[str] | None = None,
    max_catalog_bytes: int = MAX_CATALOG_BYTES,
) -> Repository:
    """Attach a root catalog of an already trusted manifest (a revision check), or, with
    `trusted=None`, the selector's root hash alone: an offline mount of a catalog the cache
    verified when it was downloaded (no history, hence no tags)."""
    if trusted is None and selector.kind is not Selects.ROOT_HASH:
        raise ConfigError("an untrusted attach needs the root catalog hash")
    owned = loader is None
    if loader is None:
        loader = temporary_loader(source, fqrn, parent=workdir,
                                  max_catalog_bytes=max_catalog_bytes)
    try:
        history = History(loader, trusted.history if trusted is not None else None)
        root, tag = selector.choose(trusted, history)
        tree = CatalogTree(root, loader.load_catalog, crowded=loader.crowded)
    except BaseException:
        if owned:
            loader.close()
        raise
    return Repository(source=source, fqrn=fqrn, trusted=trusted, tree=tree, loader=loader,
                      history=history, tag=tag,
                      fixed=trusted is not None and selector.fixed, owns_loader=owned)
