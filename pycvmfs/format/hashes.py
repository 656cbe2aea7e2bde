"""Content hashes, their textual forms and object names (fact sheet section 1).

The textual form is lowercase hex followed by an algorithm id (`-rmd160`,
`-shake128`, nothing for SHA-1/MD5); parsers tell algorithms apart by length only.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import Protocol


class Algorithm(enum.IntEnum):
    """Hash algorithms in the reference enum order (the order is stored in catalogs)."""

    MD5 = 0
    SHA1 = 1
    RIPEMD160 = 2
    SHAKE128 = 3

    @property
    def text_id(self) -> str:
        return _TEXT_ID[self]

    @property
    def digest_size(self) -> int:
        return 16 if self is Algorithm.MD5 else 20

    @property
    def text_length(self) -> int:
        return 2 * self.digest_size + len(self.text_id)

    @classmethod
    def from_name(cls, name: str) -> Algorithm:
        """CLI/config names: sha1, rmd160 (ripemd160), shake128."""
        key = name.strip().lower()
        for algo, names in _NAMES.items():
            if key in names:
                return algo
        raise ValueError(f"unknown hash algorithm {name!r} (use sha1, rmd160 or shake128)")


_TEXT_ID = {
    Algorithm.MD5: "",
    Algorithm.SHA1: "",
    Algorithm.RIPEMD160: "-rmd160",
    Algorithm.SHAKE128: "-shake128",
}
_NAMES = {
    Algorithm.SHA1: {"sha1", "sha-1"},
    Algorithm.RIPEMD160: {"rmd160", "ripemd160", "ripemd-160"},
    Algorithm.SHAKE128: {"shake128", "shake-128", "shake_128"},
}
_BY_TEXT_LENGTH = {a.text_length: a for a in Algorithm}


class Suffix(enum.StrEnum):
    """Object-type suffix appended to object names (fact sheet 1.3)."""

    NONE = ""
    CATALOG = "C"
    PARTIAL = "P"
    CERTIFICATE = "X"
    HISTORY = "H"
    METAINFO = "M"


class _Hashlib(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...


class Hasher:
    """Incremental hasher with the CVMFS digest width (SHAKE-128 gives 20 bytes)."""

    __slots__ = ("algorithm", "_h")

    def __init__(self, algorithm: Algorithm) -> None:
        self.algorithm = algorithm
        self._h: _Hashlib = _new(algorithm)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._h.update(data)

    def finish(self) -> ContentHash:
        h = self._h
        shake = self.algorithm is Algorithm.SHAKE128
        digest = h.digest(20) if shake else h.digest()  # type: ignore[attr-defined]
        return ContentHash(self.algorithm, digest)


def _new(algorithm: Algorithm) -> _Hashlib:
    if algorithm is Algorithm.SHA1:
        return hashlib.sha1()
    if algorithm is Algorithm.RIPEMD160:
        return hashlib.new("ripemd160")
    if algorithm is Algorithm.SHAKE128:
        return hashlib.shake_128()
    return hashlib.md5()


@dataclass(frozen=True, slots=True)
class ContentHash:
    """A digest with its algorithm; `str()` is the CVMFS textual form."""

    algorithm: Algorithm
    digest: bytes

    def __post_init__(self) -> None:
        if len(self.digest) != self.algorithm.digest_size:
            raise ValueError(
                f"{self.algorithm.name} digest must be {self.algorithm.digest_size} bytes"
            )

    def __str__(self) -> str:
        return self.digest.hex() + self.algorithm.text_id

    @property
    def text(self) -> str:
        return str(self)

    @classmethod
    def parse(cls, text: str) -> ContentHash:
        """Parse a textual hash; the algorithm follows from the length (fact sheet 1.2)."""
        algo = _BY_TEXT_LENGTH.get(len(text))
        if algo is None or not text.endswith(algo.text_id):
            raise ValueError(f"not a CernVM-FS hash: {text!r}")
        hex_part = text[: 2 * algo.digest_size]
        if hex_part != hex_part.lower():
            raise ValueError(f"hash must be lowercase hex: {text!r}")
        try:
            return cls(algo, bytes.fromhex(hex_part))
        except ValueError:
            raise ValueError(f"not a CernVM-FS hash: {text!r}") from None

    @classmethod
    def of(cls, algorithm: Algorithm, data: bytes | bytearray | memoryview) -> ContentHash:
        h = Hasher(algorithm)
        h.update(data)
        return h.finish()

    def object_path(self, suffix: Suffix | str = Suffix.NONE) -> str:
        """Path relative to the repository base URL: `data/XX/rest[suffix]`."""
        text = str(self)
        return f"data/{text[:2]}/{text[2:]}{Suffix(suffix).value}"

    def alt_path(self, suffix: Suffix | str = Suffix.NONE) -> str:
        """`.cvmfsalt-` location used when the manifest says `A=yes`."""
        return f".cvmfsalt-{self}{Suffix(suffix).value}"

    def cache_path(self) -> str:
        """Relative path in a client cache: `XX/rest` (no suffix)."""
        text = str(self)
        return f"{text[:2]}/{text[2:]}"


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()
