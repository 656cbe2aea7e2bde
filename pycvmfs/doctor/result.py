"""What one check found: its level, what was seen and, when it is not ok, the fix.

Exit codes of `pycvmfs doctor` (the worst level found): 0 every check ok, 3 warnings but
no failure, 1 at least one failure. 2 stays the usage error of every command."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class Level(enum.IntEnum):
    """Ordered: a larger value is worse."""

    OK = 0
    WARN = 1
    FAIL = 2

    @property
    def label(self) -> str:
        return self.name.lower()


EXIT_CODES = {Level.OK: 0, Level.WARN: 3, Level.FAIL: 1}


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One line of the report. `fix` is empty for ok results."""

    name: str
    level: Level
    found: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "level": self.level.label, "found": self.found,
                "fix": self.fix}


def ok(name: str, found: str) -> CheckResult:
    return CheckResult(name, Level.OK, found)


def warn(name: str, found: str, fix: str) -> CheckResult:
    return CheckResult(name, Level.WARN, found, fix)


def fail(name: str, found: str, fix: str) -> CheckResult:
    return CheckResult(name, Level.FAIL, found, fix)


def worst(results: Iterable[CheckResult]) -> Level:
    return max((r.level for r in results), default=Level.OK)


def exit_code(results: Iterable[CheckResult]) -> int:
    return EXIT_CODES[worst(results)]
