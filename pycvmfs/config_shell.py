"""Reading CernVM-FS configuration files without running them: the subset of shell
syntax the reference's files use (`KEY=VALUE`, `export`/`readonly`, quotes, `$VAR`,
`${VAR:-word}`, comments), with where every value came from. Nothing is ever executed:
command substitution and other shell syntax produce a warning and the line is skipped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

MAX_CONTINUATION_LINES: Final = 200  # an unterminated quote gives up after this many lines
_EMPTY: Final[Mapping[str, str]] = MappingProxyType({})
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PREFIX = re.compile(r"(export|readonly)(?:[ \t]+|$)")
_CONTROL = frozenset({"if", "then", "elif", "else", "fi", "return"})


# --- merging with provenance ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Assignment:
    """One accepted assignment, in order: `source` is `file:line`, `<built-in ...>` or `<-o>`."""

    key: str
    value: str
    source: str


class Settings:
    """The mutable merge state while files are parsed: values, origins, readonly keys.

    `environ` answers `$VAR` references to names no file has set. Not thread-safe; one
    `Settings` belongs to one `load_settings` call."""

    def __init__(self, environ: Mapping[str, str] = _EMPTY) -> None:
        self.environ = environ
        self.values: dict[str, str] = {}
        self.origins: dict[str, str] = {}
        self.readonly: set[str] = set()
        self.trace: list[Assignment] = []

    def assign(self, key: str, value: str, source: str, *, force: bool = False) -> str | None:
        """Set `key`; returns a warning instead when it is readonly (unless `force`).

        Re-assigning a readonly key its current value is accepted silently (bash would
        complain) so that the package default.conf does not warn on every mount."""
        if key in self.readonly and not force and self.values.get(key) != value:
            where = self.origins.get(key, "an earlier file")
            return f"{source}: {key} is readonly (set in {where}); ignored"
        self.values[key] = value
        self.origins[key] = source
        self.trace.append(Assignment(key, value, source))
        return None

    def lookup(self, name: str) -> str | None:
        value = self.values.get(name)
        return value if value is not None else self.environ.get(name)


# --- parsing one file -----------------------------------------------------------------------


class _MalformedError(Exception):
    """The statement cannot be understood without running a shell."""


class _UnterminatedError(_MalformedError):
    """A quote or line continuation runs past the end of the text seen so far."""


@dataclass(slots=True)
class _Statement:
    """Assignments of one statement, applied only when the whole statement parsed."""

    settings: Settings
    pending: dict[str, str] = field(default_factory=dict)
    readonly: list[str] = field(default_factory=list)

    def lookup(self, name: str) -> str:
        if name in self.pending:
            return self.pending[name]
        value = self.settings.lookup(name)
        return "" if value is None else value


def parse_config_text(text: str, *, source: str, settings: Settings) -> list[str]:
    """Apply the assignments of one config file to `settings`; return `file:line` warnings."""
    warnings: list[str] = []
    lines = [line.removesuffix("\r") for line in text.split("\n")]  # bash splits at \n only
    index = 0
    while index < len(lines):
        first = index
        statement = lines[index]
        index += 1
        where = f"{source}:{first + 1}"
        while True:
            try:
                parsed = _parse_statement(statement, settings)
            except _UnterminatedError as exc:
                if index < len(lines) and index - first < MAX_CONTINUATION_LINES:
                    statement += "\n" + lines[index]
                    index += 1
                    continue
                warnings.append(f"{where}: {exc}; ignored")
            except _MalformedError as exc:
                warnings.append(f"{where}: {exc}; ignored")
            else:
                warnings += _apply(parsed, settings, where)
            break
    return warnings


def _apply(parsed: _Statement, settings: Settings, where: str) -> list[str]:
    warnings = []
    for key, value in parsed.pending.items():
        warning = settings.assign(key, value, where)
        if warning:
            warnings.append(warning)
    settings.readonly.update(parsed.readonly)
    return warnings


def _parse_statement(text: str, settings: Settings) -> _Statement:
    statement = _Statement(settings)
    pos = _skip_blanks(text, 0)
    prefixes: set[str] = set()
    while match := _PREFIX.match(text, pos):
        prefixes.add(match.group(1))
        pos = _skip_blanks(text, match.end())
    while pos < len(text) and text[pos] != "#":
        name = _NAME.match(text, pos)
        end = name.end() if name else pos
        if name and end < len(text) and text[end] == "=":
            value, pos = _scan_value(text, end + 1, statement)
            statement.pending[name.group()] = value
            if "readonly" in prefixes:
                statement.readonly.append(name.group())
        elif name and prefixes and (end == len(text) or text[end] in " \t#"):
            pos = end  # `export NAME` / `readonly NAME` without a value
            if "readonly" in prefixes:
                statement.readonly.append(name.group())
        else:
            word = text[pos:].split(None, 1)[0] if text[pos:].strip() else text[pos:]
            if word in _CONTROL:
                raise _MalformedError(f"shell {word!r} is not evaluated (all branches apply)")
            raise _MalformedError(f"not a KEY=VALUE assignment: {word!r} (shell code is not run)")
        if pos < len(text) and text[pos] not in " \t\n":
            raise _MalformedError(f"unexpected {text[pos]!r} after the value of {name.group()}")
        pos = _skip_blanks(text, pos)
    return statement


def _skip_blanks(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\n":
        pos += 1
    return pos


_SPECIAL = "$#?-!@*0123456789'\""  # special parameters, $'...' and $"..." quoting
_UNSUPPORTED = {"`": "command substitution (backticks) is not supported",
                ";": "';' (several commands) is not supported",
                "|": "pipes are not supported", "&": "'&' is not supported",
                "<": "redirections are not supported", ">": "redirections are not supported",
                "(": "'(' is not supported", ")": "')' is not supported"}


def _scan_value(text: str, pos: int, statement: _Statement) -> tuple[str, int]:
    """One shell word starting at `pos`: quotes removed, references expanded."""
    out: list[str] = []
    tilde_ok = True  # at the start or after an unquoted ':' (bash, in assignments)
    while pos < len(text) and text[pos] not in " \t\n":
        char = text[pos]
        tilde_here, tilde_ok = tilde_ok, False
        if char == "~" and tilde_here and (pos + 1 == len(text) or text[pos + 1] in "/: \t\n"):
            out.append(statement.lookup("HOME") or "~")
            pos += 1
        elif char == "'":
            end = text.find("'", pos + 1)
            if end == -1:
                raise _UnterminatedError("unterminated single quote")
            out.append(text[pos + 1 : end])
            pos = end + 1
        elif char == '"':
            pos = _scan_double(text, pos + 1, out, statement)
        elif char == "\\":
            if pos + 1 >= len(text):
                raise _UnterminatedError("line continuation at the end of the file")
            out.append("" if text[pos + 1] == "\n" else text[pos + 1])
            pos += 2
        elif char == "$":
            pos = _expand(text, pos, out, statement)
        elif char in _UNSUPPORTED:
            raise _MalformedError(_UNSUPPORTED[char])
        else:
            out.append(char)
            pos += 1
            tilde_ok = char == ":"
    return "".join(out), pos


def _scan_double(text: str, pos: int, out: list[str], statement: _Statement) -> int:
    """Inside "...": returns the position after the closing quote."""
    while pos < len(text):
        char = text[pos]
        if char == '"':
            return pos + 1
        if char == "\\" and pos + 1 < len(text) and text[pos + 1] in '"\\$`\n':
            out.append("" if text[pos + 1] == "\n" else text[pos + 1])
            pos += 2
        elif char == "$":
            pos = _expand(text, pos, out, statement)
        elif char == "`":
            raise _MalformedError(_UNSUPPORTED["`"])
        else:
            out.append(char)
            pos += 1
    raise _UnterminatedError("unterminated double quote")


def _expand(text: str, pos: int, out: list[str], statement: _Statement) -> int:
    """`$NAME`, `${NAME}`, `${NAME:-word}`, `${NAME:=word}` at `pos`; a lone `$` is literal."""
    following = text[pos + 1 : pos + 2]
    if following == "(":
        raise _MalformedError("command substitution $(...) is not supported")
    if (following and following in _SPECIAL) or text.startswith("\\\n", pos + 1):
        raise _MalformedError(f"${following} is not supported")
    if following != "{":
        name = _NAME.match(text, pos + 1)
        if name is None:
            out.append("$")
            return pos + 1
        out.append(statement.lookup(name.group()))
        return name.end()
    end = text.find("}", pos + 2)
    if end == -1:
        raise _MalformedError("unterminated ${")
    inner = text[pos + 2 : end]
    name = _NAME.match(inner)
    if name is None:
        raise _MalformedError(f"unsupported parameter expansion ${{{inner}}}")
    operator, word = inner[name.end() : name.end() + 2], inner[name.end() + 2 :]
    value = statement.lookup(name.group())
    if name.end() == len(inner):
        out.append(value)
    elif operator in (":-", ":="):
        if value == "":
            value = _expand_word(word, statement)
            if operator == ":=":
                statement.pending[name.group()] = value
        out.append(value)
    else:
        raise _MalformedError(f"unsupported parameter expansion ${{{inner}}}")
    return end + 1


def _expand_word(word: str, statement: _Statement) -> str:
    """The `word` of `${X:-word}`: quotes and references as in a double-quoted string."""
    if len(word) >= 2 and word[0] == word[-1] == "'":
        return word[1:-1]
    if len(word) >= 2 and word[0] == word[-1] == '"':
        word = word[1:-1]
    out: list[str] = []
    if _scan_double(word + '"', 0, out, statement) != len(word) + 1:
        raise _MalformedError(f"unsupported default value {word!r}")
    return "".join(out)
