"""tools/check_stale_words.py: which phrases in which places count as stale documentation."""

from __future__ import annotations

import pytest

from tools.check_stale_words import find_stale_words

MODULE = '''"""A module docstring.

Streaming support is NOT YET there.
"""

import os  # the cache is to come


def f() -> int:
    """Listing (to come)."""
    message = "a string the program uses: not yet counted"
    return len(message)


class C:
    """Nested catalogs: see the next
    issue."""

    def g(self) -> None:
        # TODO(issue 12): handle
        # the next
        # issue of the day
        pass
'''


def test_hits_in_docstrings_and_comments_with_their_lines() -> None:
    assert find_stale_words(MODULE) == [
        (3, "NOT YET"), (6, "to come"), (10, "to come"), (16, "next issue"),
        (20, "TODO(issue"), (21, "next issue")]


def test_strings_the_program_uses_are_not_documentation() -> None:
    source = 'X = "not yet"\nprint("to come", f"{X} next issue")\nY = """todo issue"""\n'
    assert find_stale_words(source) == []


@pytest.mark.parametrize("text", ["note yet", "cannot yet", "to comet", "next issues",
                                  "not   quite yet", "tissue"])
def test_near_misses_are_not_hits(text: str) -> None:
    assert find_stale_words(f"# {text}\n") == []


def test_line_numbers_count_characters_not_bytes() -> None:
    source = 'x = "é"; """héllo\n\nnot yet"""\n'
    assert find_stale_words(source) == [(3, "not yet")]


def test_not_python_raises() -> None:
    with pytest.raises(SyntaxError):
        find_stale_words("def (:\n")
