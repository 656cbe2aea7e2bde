"""Variant symlinks: `$(NAME)` and `$(NAME:-default)` in link targets, expanded from the
client's environment (fact sheet 6.10). An unmatched `$(` is kept literally; a variable
that is set but empty expands to the empty string."""

from __future__ import annotations

from collections.abc import Mapping


def expand_symlink(target: str, environment: Mapping[str, str]) -> str:
    out: list[str] = []
    position = 0
    while (start := target.find("$(", position)) != -1:
        end = target.find(")", start + 2)
        if end == -1:
            break
        out.append(target[position:start])
        name, sep, default = target[start + 2 : end].partition(":-")
        value = environment.get(name)
        out.append(value if value is not None else (default if sep else ""))
        position = end + 1
    out.append(target[position:])
    return "".join(out)
