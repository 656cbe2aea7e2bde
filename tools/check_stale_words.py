"""Fail when a comment or docstring promises later work instead of saying what is true now.

    python tools/check_stale_words.py DIR_OR_FILE...

Prints one line per hit, `path:line: phrase`, and exits 1 if there was any (2 for a file
that does not parse). Run by `make lint` over pycvmfs/, tests/, bench/ and testdata/.

Only comments and bare string statements (docstrings) are read, through `tokenize` and
`ast`: a string the program uses (a message, test data) may contain the phrases. A phrase
may wrap across the lines of a docstring or of consecutive comment lines. No linter we use
has a rule for arbitrary phrases in docstrings (ruff has no pattern rules), hence this file.
"""

from __future__ import annotations

import ast
import io
import re
import sys
import tokenize
from collections.abc import Iterator
from pathlib import Path

STALE = re.compile(r"\b(?:next\s+issue|to\s+come|not\s+yet|todo\W*issue)\b", re.IGNORECASE)


def find_stale_words(source: str) -> list[tuple[int, str]]:
    """(line, phrase) for every stale phrase in the comments and docstrings of `source`,
    by line. Raises SyntaxError (or tokenize.TokenError) when `source` is not Python."""
    hits = [hit for start, text in _documentation(source) for hit in _matches(start, text)]
    return sorted(set(hits))


def _matches(start: int, text: str) -> Iterator[tuple[int, str]]:
    for match in STALE.finditer(text):
        line = start + text.count("\n", 0, match.start())
        yield line, " ".join(match.group().split())


def _documentation(source: str) -> Iterator[tuple[int, str]]:
    """(first line, raw text) of each docstring and of each run of comment lines."""
    lines = source.splitlines(keepends=True)
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str) and node.end_lineno is not None
                and node.end_col_offset is not None):
            # ast offsets count UTF-8 bytes
            chunk = "".join(lines[node.lineno - 1:node.end_lineno]).encode()
            end = len(chunk) - len(lines[node.end_lineno - 1].encode()) + node.end_col_offset
            yield node.lineno, chunk[node.col_offset:end].decode()
    run: list[str] = []
    run_start = run_end = 0
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type != tokenize.COMMENT:
            continue
        row = token.start[0]
        if run and row != run_end + 1:
            yield run_start, "\n".join(run)
            run = []
        if not run:
            run_start = row
        run.append(token.string.lstrip("#"))
        run_end = row
    if run:
        yield run_start, "\n".join(run)


def _python_files(paths: list[str]) -> Iterator[Path]:
    for name in paths:
        path = Path(name)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*.py") if "__pycache__" not in p.parts)
        else:
            yield path


def main(argv: list[str]) -> int:
    status = 0
    for path in _python_files(argv):
        try:
            hits = find_stale_words(path.read_text(encoding="utf-8"))
        except (SyntaxError, tokenize.TokenError, UnicodeDecodeError) as exc:
            print(f"{path}: cannot read as Python: {exc}")
            status = 2
            continue
        for line, phrase in hits:
            print(f"{path}:{line}: {phrase}")
            status = status or 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
