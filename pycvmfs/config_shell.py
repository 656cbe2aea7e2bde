"""Reading CernVM-FS configuration files without running them: the subset of shell
syntax the reference's files use (`KEY=VALUE`, `export`/`readonly`, quotes, `$VAR`,
`${VAR:-word}`, comments), with where every value came from. Nothing is ever executed:
command substitution and other shell syntax produce a warning and the line is skipped.

Hostile text stays cheap: `parse_config_text` makes one pass over the text, never re-reading
a statement (an unterminated quote used to be re-parsed for every following line); common
lines take one regular-expression match (`_SIMPLE`); `${...}` is looked for only on its
line; the warnings of one file are capped (`MAX_REPORTED`, then one line sums up the rest
with their line range), so a megabyte of garbage yields a few dozen lines, not a flood.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

MAX_REPORTED: Final = 100  # warnings listed one by one per file; the rest are summed up
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
    """The statement cannot be understood without running a shell; `pos` is where."""

    def __init__(self, message: str, pos: int) -> None:
        super().__init__(message)
        self.pos = pos


class _UnterminatedError(_MalformedError):
    """A quote or line continuation runs to the end of the file."""


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


class _Report:
    """The warnings of one file: the first `MAX_REPORTED` one by one, the rest summed up
    (with their line range) so that a file of garbage cannot flood the log or the memory."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.warnings: list[str] = []
        self.more = 0
        self.lines: tuple[int, int] | None = None
        self.malformed = 0  # statements skipped because they are not assignments

    def add(self, first_line: int, last_line: int, message: str, *,
            malformed: bool = False) -> None:
        self.malformed += malformed
        if len(self.warnings) < MAX_REPORTED:
            self.warnings.append(message)
            return
        self.more += 1
        self.lines = (self.lines or (first_line, 0))[0], last_line

    def result(self) -> list[str]:
        if self.lines is None:
            return self.warnings
        first, last = self.lines
        return [*self.warnings,
                f"{self.source}:{first}: {self.more} more problems on lines {first}-{last}, not "
                f"listed one by one (the first {MAX_REPORTED} are above); those lines ignored"]


def parse_config_text(text: str, *, source: str, settings: Settings) -> list[str]:
    """Apply the assignments of one config file to `settings`; return `file:line` warnings
    for everything skipped. One pass over the text: time is linear in its length."""
    return parse_config(text, source=source, settings=settings).warnings


@dataclass(frozen=True, slots=True)
class ParseResult:
    """What parsing one file said: every warning, and whether some of them are statements
    that are not assignments (a `--config` file with such lines is refused)."""

    warnings: list[str]
    malformed: int


def parse_config(text: str, *, source: str, settings: Settings) -> ParseResult:
    """`parse_config_text`, also counting the statements skipped as malformed."""
    if "\r" in text:  # CRLF files are common: a \r ending a line is dropped
        text = text.replace("\r\n", "\n").removesuffix("\r")
    report = _Report(source)
    pos, line, end = 0, 1, len(text)
    while pos < end:
        simple = _SIMPLE.match(text, pos)
        if simple:  # the common case, without the general parser's per-character work
            key = simple.group("key")
            if key is not None:
                value = next(v for v in simple.group("plain", "single", "double") if v is not None)
                warning = settings.assign(key, value, f"{source}:{line}")
                if warning:
                    report.add(line, line, warning)
            line += 1
            pos = simple.end()
            continue
        where = f"{source}:{line}"
        try:
            parsed, after = _parse_statement(text, pos, settings)
        except _UnterminatedError as exc:
            last = line + text.count("\n", pos, end - 1)  # a final newline ends the last line
            span = f"lines {line}-{last} (to the end of the file) " if last > line else ""
            report.add(line, last, f"{where}: {exc}; {span}ignored", malformed=True)
            break
        except _MalformedError as exc:
            newline = text.find("\n", exc.pos)
            after = end if newline == -1 else newline + 1
            last = line + text.count("\n", pos, max(pos, exc.pos))
            span = f"lines {line}-{last} " if last > line else ""
            report.add(line, last, f"{where}: {exc}; {span}ignored", malformed=True)
        else:
            for warning in _apply(parsed, settings, where):
                report.add(line, line, warning)
        line += text.count("\n", pos, after)
        pos = after
    return ParseResult(report.result(), report.malformed)


def _apply(parsed: _Statement, settings: Settings, where: str) -> list[str]:
    warnings = []
    for key, value in parsed.pending.items():
        warning = settings.assign(key, value, where)
        if warning:
            warnings.append(warning)
    settings.readonly.update(parsed.readonly)
    return warnings


def _parse_statement(text: str, pos: int, settings: Settings) -> tuple[_Statement, int]:
    """The statement starting at `pos` and the position after its line's newline."""
    statement = _Statement(settings)
    pos = _skip_blanks(text, pos)
    prefixes: set[str] = set()
    while match := _PREFIX.match(text, pos):
        prefixes.add(match.group(1))
        pos = _skip_blanks(text, match.end())
    while pos < len(text) and text[pos] not in "#\n":
        name = _NAME.match(text, pos)
        end = name.end() if name else pos
        if name and end < len(text) and text[end] == "=":
            value, pos = _scan_value(text, end + 1, statement)
            if "\0" in value:
                raise _MalformedError(f"a NUL byte in the value of {name.group()}", end)
            statement.pending[name.group()] = value
            if "readonly" in prefixes:
                statement.readonly.append(name.group())
        elif name and prefixes and (end == len(text) or text[end] in " \t\n#"):
            pos = end  # `export NAME` / `readonly NAME` without a value
            if "readonly" in prefixes:
                statement.readonly.append(name.group())
        else:
            word = _WORD.match(text, pos)
            shown = word.group() if word else text[pos]
            if shown in _CONTROL:
                raise _MalformedError(f"shell {shown!r} is not evaluated (all branches apply)",
                                      pos)
            raise _MalformedError(f"not a KEY=VALUE assignment: {_clip(shown)!r} "
                                  "(shell code is not run)", pos)
        if pos < len(text) and text[pos] not in " \t\n":
            raise _MalformedError(f"unexpected {text[pos]!r} after the value of {name.group()}",
                                  pos)
        pos = _skip_blanks(text, pos)
    newline = text.find("\n", pos)
    return statement, len(text) if newline == -1 else newline + 1


def _skip_blanks(text: str, pos: int) -> int:
    """Past blanks and `\\`-newline continuations (bash removes those before splitting)."""
    match = _BLANKS.match(text, pos)
    return match.end() if match else pos


def _clip(text: str, limit: int = 60) -> str:
    """`text` shortened for a message: a warning stays one readable line."""
    return text if len(text) <= limit else text[:limit] + "..."


_SPECIAL = "$#?-!@*0123456789'\""  # special parameters, $'...' and $"..." quoting
_UNSUPPORTED = {"`": "command substitution (backticks) is not supported",
                ";": "';' (several commands) is not supported",
                "|": "pipes are not supported", "&": "'&' is not supported",
                "<": "redirections are not supported", ">": "redirections are not supported",
                "(": "'(' is not supported", ")": "')' is not supported"}
_WORD = re.compile(r"[^\s]+")
# One whole line that is blank, a comment, or `[export ]KEY=VALUE` whose value needs no
# expansion (plain, '...' or "..." on one line), with an optional comment. Possessive
# quantifiers: a long line that does not fit fails without backtracking through it.
_SIMPLE = re.compile(r"""[ \t]*(?:(?:export[ \t]+)?(?P<key>[A-Za-z_][A-Za-z0-9_]*)=
                         (?:(?P<plain>[^\s'"\\$~`;|&<>()\0]*+)
                          |'(?P<single>[^'\n\0]*+)'
                          |"(?P<double>[^"\\$`\n\0]*+)")
                         (?:[ \t]+|(?=\n)|\Z))?(?:\#[^\n]*)?(?:\n|\Z)""", re.VERBOSE)
_BLANKS = re.compile(r"(?:[ \t]|\\\n)+")
_PLAIN = re.compile(r"[^\s'\"\\$~:`;|&<>()]+")  # unquoted characters without a meaning
_PLAIN_DOUBLE = re.compile(r"[^\"\\$`]+")  # the same inside "..."
_MAX_EXPANSION = 4096  # `${...}` longer than this is not looked for (keeps scanning linear)


def _scan_value(text: str, pos: int, statement: _Statement) -> tuple[str, int]:
    """One shell word starting at `pos`: quotes removed, references expanded."""
    out: list[str] = []
    tilde_ok = True  # at the start or after an unquoted ':' (bash, in assignments)
    while pos < len(text) and text[pos] not in " \t\n":
        plain = _PLAIN.match(text, pos)
        if plain:
            out.append(plain.group())
            pos, tilde_ok = plain.end(), False
            continue
        char = text[pos]
        tilde_here, tilde_ok = tilde_ok, False
        if char == "~" and tilde_here and (pos + 1 == len(text) or text[pos + 1] in "/: \t\n"):
            out.append(statement.lookup("HOME") or "~")
            pos += 1
        elif char == "'":
            end = text.find("'", pos + 1)
            if end == -1:
                raise _UnterminatedError("unterminated single quote", pos)
            out.append(text[pos + 1 : end])
            pos = end + 1
        elif char == '"':
            pos = _scan_double(text, pos + 1, out, statement)
        elif char == "\\":
            if pos + 1 >= len(text):
                raise _UnterminatedError("line continuation at the end of the file", pos)
            out.append("" if text[pos + 1] == "\n" else text[pos + 1])
            pos += 2
        elif char == "$":
            pos = _expand(text, pos, out, statement)
        elif char in _UNSUPPORTED:
            raise _MalformedError(_UNSUPPORTED[char], pos)
        else:
            out.append(char)
            pos += 1
            tilde_ok = char == ":"
    return "".join(out), pos


def _scan_double(text: str, pos: int, out: list[str], statement: _Statement) -> int:
    """Inside "...": returns the position after the closing quote."""
    start = pos - 1
    if text.find('"', pos) == -1:  # not closed anywhere: do not copy the rest of the file
        raise _UnterminatedError("unterminated double quote", start)
    while pos < len(text):
        plain = _PLAIN_DOUBLE.match(text, pos)
        if plain:
            out.append(plain.group())
            pos = plain.end()
            continue
        char = text[pos]
        if char == '"':
            return pos + 1
        if char == "\\" and pos + 1 < len(text) and text[pos + 1] in '"\\$`\n':
            out.append("" if text[pos + 1] == "\n" else text[pos + 1])
            pos += 2
        elif char == "$":
            pos = _expand(text, pos, out, statement)
        elif char == "`":
            raise _MalformedError(_UNSUPPORTED["`"], pos)
        else:
            out.append(char)
            pos += 1
    raise _UnterminatedError("unterminated double quote", start)


def _expand(text: str, pos: int, out: list[str], statement: _Statement) -> int:
    """`$NAME`, `${NAME}`, `${NAME:-word}`, `${NAME:=word}` at `pos`; a lone `$` is literal."""
    following = text[pos + 1 : pos + 2]
    if following == "(":
        raise _MalformedError("command substitution $(...) is not supported", pos)
    if (following and following in _SPECIAL) or text.startswith("\\\n", pos + 1):
        raise _MalformedError(f"${following} is not supported", pos)
    if following != "{":
        name = _NAME.match(text, pos + 1)
        if name is None:
            out.append("$")
            return pos + 1
        out.append(statement.lookup(name.group()))
        return name.end()
    end = text.find("}", pos + 2, pos + 2 + _MAX_EXPANSION)
    if end == -1 or "\n" in text[pos + 2 : end]:
        raise _MalformedError("unterminated ${ (no } on its line)", pos)
    inner = text[pos + 2 : end]
    name = _NAME.match(inner)
    if name is None:
        raise _MalformedError(f"unsupported parameter expansion ${{{_clip(inner)}}}", pos)
    operator, word = inner[name.end() : name.end() + 2], inner[name.end() + 2 :]
    value = statement.lookup(name.group())
    if name.end() == len(inner):
        out.append(value)
    elif operator in (":-", ":="):
        if value == "":
            try:
                value = _expand_word(word, statement)
            except _MalformedError as exc:  # its position is in `word`: report the ${
                raise _MalformedError(str(exc), pos) from None
            if operator == ":=":
                statement.pending[name.group()] = value
        out.append(value)
    else:
        raise _MalformedError(f"unsupported parameter expansion ${{{_clip(inner)}}}", pos)
    return end + 1


def _expand_word(word: str, statement: _Statement) -> str:
    """The `word` of `${X:-word}`: quotes and references as in a double-quoted string."""
    if len(word) >= 2 and word[0] == word[-1] == "'":
        return word[1:-1]
    if len(word) >= 2 and word[0] == word[-1] == '"':
        word = word[1:-1]
    out: list[str] = []
    if _scan_double(word + '"', 0, out, statement) != len(word) + 1:
        raise _MalformedError(f"unsupported default value {_clip(word)!r}", 0)
    return "".join(out)
