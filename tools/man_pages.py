"""Write the manual pages of the `pycvmfs` command with click-man: one page per command, as
click-man names them (`pycvmfs.1`, `pycvmfs-ingest.1`, `pycvmfs-images-list.1`, ...).

    python tools/man_pages.py [DIR]      (default: pycvmfs/man, installed with the package)

The pages are committed; tests/unit/cli/test_man_pages.py fails when they no longer match
the CLI (run `make man` after changing a command, an option or a help text). click-man walks
a group's `commands`; the `pycvmfs` group loads its commands lazily, so the pages are made
from a group that holds them all. The date in each page's title line is click-man's
(SOURCE_DATE_EPOCH or today); the test ignores that line.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TARGET = ROOT / "pycvmfs" / "man"


def loaded_cli() -> click.Group:
    """The `pycvmfs` group with every command loaded (what click-man can walk)."""
    from pycvmfs.cli.main import cli

    context = click.Context(cli, info_name="pycvmfs")
    commands = {name: cli.get_command(context, name) for name in cli.list_commands(context)}
    return click.Group("pycvmfs", commands={k: v for k, v in commands.items() if v},
                       params=cli.params, help=cli.help)


def write_pages(target: Path) -> list[Path]:
    """Replace the pages in `target` by freshly generated ones; their paths, sorted."""
    from click_man.core import write_man_pages  # type: ignore[import-untyped]

    from pycvmfs import __version__

    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob("*.1"):
        old.unlink()
    write_man_pages("pycvmfs", loaded_cli(), version=__version__, target_dir=str(target))
    return sorted(target.glob("*.1"))


def main(argv: list[str]) -> int:
    target = Path(argv[0]) if argv else DEFAULT_TARGET
    pages = write_pages(target)
    print(f"wrote {len(pages)} man pages to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
