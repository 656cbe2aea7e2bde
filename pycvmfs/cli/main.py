"""Entry point: one click group; each subcommand lives in its own module under cli/."""

from __future__ import annotations

import importlib
import sys

import click

from pycvmfs import __version__
from pycvmfs.errors import PycvmfsError

# command -> module under pycvmfs.cli; a module is imported only when its command runs
# (`pycvmfs mount` need not load the publisher, numpy or the chunker)
COMMAND_MODULES = {"keys": "keys", "publish": "publish", "whitelist": "whitelist",
                   "ls": "read", "cat": "read", "stat": "read",
                   "mount": "mount", "umount": "mount", "cache": "cache", "ingest": "images_admin",
                   "run": "run", "wishlist": "images_admin", "webhook": "images_admin",
                   "images": "images_admin", "gc": "gc_report", "report": "gc_report"}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module_name = COMMAND_MODULES.get(cmd_name)
        if module_name is None:
            return None
        module = importlib.import_module(f"pycvmfs.cli.{module_name}")
        command: click.Command = next(c for c in module.COMMANDS if c.name == cmd_name)
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pycvmfs")
def cli() -> None:
    """CernVM-FS client and publisher."""


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; library errors become one clear line on stderr and exit code 1. A
    command that returns an int (`pycvmfs run`) exits with it."""
    try:
        result = cli.main(args=argv, prog_name="pycvmfs", standalone_mode=False)
    except PycvmfsError as exc:
        click.echo(f"pycvmfs: error: {exc}", err=True)
        return 1
    except click.exceptions.Abort:
        click.echo("pycvmfs: aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("pycvmfs: interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 0
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
