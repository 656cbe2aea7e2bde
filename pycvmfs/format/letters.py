"""The signed-letter envelope shared by `.cvmfspublished` and `.cvmfswhitelist`.

Layout (fact sheet 2.1, 2.3, 3.3, pitfalls 2 and 25)::

    <body: text lines, each ending in \\n>--\\n<printed hash>\\n<signature bytes to EOF>

The body runs up to and including the newline before the first `\\n--\\n`; the printed hash
is the textual hash of the body, its algorithm given by its length; what gets signed is the
ASCII printed hash (how it is signed differs between manifest and whitelist, so signing
and verifying the signature are left to callers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pycvmfs.errors import LetterHashError, LetterMalformedError
from pycvmfs.format.hashes import Algorithm, ContentHash

SEPARATOR = b"\n--\n"
SEPARATOR_LINE = "--"

# MD5 is never a content hash algorithm, so a 32-character hash line is refused.
LETTER_ALGORITHMS = (Algorithm.SHA1, Algorithm.RIPEMD160, Algorithm.SHAKE128)
_BY_LENGTH = {a.text_length: a for a in LETTER_ALGORITHMS}


@dataclass(frozen=True, slots=True)
class Letter:
    """The three signed parts of a letter, exactly as they were read."""

    body: bytes  # includes the newline before `--`
    hash_line: bytes  # printed ASCII hash without its newline: the signed bytes
    signature: bytes  # raw signature, everything after the hash line's newline

    @property
    def algorithm(self) -> Algorithm:
        """Hash algorithm implied by the printed hash's length."""
        return algorithm_of(self.hash_line)

    def to_bytes(self) -> bytes:
        return self.body + b"--\n" + self.hash_line + b"\n" + self.signature


def split_letter(raw: bytes, *, what: str = "letter") -> Letter:
    """Cut `raw` at the first `\\n--\\n` into body, printed hash and signature."""
    cut = raw.find(SEPARATOR)
    if cut < 0:
        raise LetterMalformedError(f"{what}: no '--' separator line")
    body = raw[: cut + 1]
    rest = raw[cut + len(SEPARATOR) :]
    newline = rest.find(b"\n")
    if newline < 0:
        raise LetterMalformedError(f"{what}: hash line after '--' does not end in a newline")
    return Letter(body=body, hash_line=rest[:newline], signature=rest[newline + 1 :])


def algorithm_of(hash_line: bytes, *, what: str = "letter") -> Algorithm:
    """Infer the algorithm from the printed hash's length (fact sheet 1.2)."""
    algorithm = _BY_LENGTH.get(len(hash_line))
    if algorithm is None or not hash_line.endswith(algorithm.text_id.encode("ascii")):
        shown = hash_line[:60].decode("ascii", "replace")
        raise LetterMalformedError(f"{what}: hash line {shown!r} is not a CernVM-FS hash")
    return algorithm


def body_hash(body: bytes, algorithm: Algorithm) -> bytes:
    """The printed-hash form (ASCII textual hash) of `body`."""
    return str(ContentHash.of(algorithm, body)).encode("ascii")


def check_letter_hash(letter: Letter, *, what: str = "letter") -> ContentHash:
    """Recompute the body's hash and compare it byte for byte with the printed one."""
    algorithm = algorithm_of(letter.hash_line, what=what)
    computed = ContentHash.of(algorithm, letter.body)
    if str(computed).encode("ascii") != letter.hash_line:
        printed = letter.hash_line.decode("ascii", "replace")
        raise LetterHashError(f"{what}: body hashes to {computed}, letter says {printed}")
    return computed


def body_lines(body: bytes, *, what: str = "letter") -> list[str]:
    """Body as text lines (without newlines), stopping at a `--` line like the reference."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LetterMalformedError(f"{what}: body is not text ({exc.reason})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the body ends in a newline; a partial last line is not taken
    else:
        lines = lines[:-1]
    if SEPARATOR_LINE in lines:
        lines = lines[: lines.index(SEPARATOR_LINE)]
    return lines


def build_letter(
    body: bytes,
    algorithm: Algorithm,
    sign: Callable[[bytes], bytes],
    *,
    what: str = "letter",
) -> bytes:
    """Hash `body`, sign the ASCII hash with `sign` and assemble the letter bytes."""
    if algorithm not in LETTER_ALGORITHMS:
        raise LetterMalformedError(f"{what}: {algorithm.name} cannot hash a letter")
    if not body.endswith(b"\n"):
        raise LetterMalformedError(f"{what}: body must end with a newline")
    if SEPARATOR in body or body.startswith(b"--\n"):
        raise LetterMalformedError(f"{what}: body contains a '--' line")
    hash_line = body_hash(body, algorithm)
    return Letter(body=body, hash_line=hash_line, signature=sign(hash_line)).to_bytes()
