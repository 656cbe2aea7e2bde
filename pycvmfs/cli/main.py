"""Entry point: one click group; each subcommand lives in its own module under cli/."""

from __future__ import annotations

import sys

import click

from pycvmfs import __version__
from pycvmfs.errors import PycvmfsError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pycvmfs")
def cli() -> None:
    """CernVM-FS client and publisher."""


def _register() -> None:
    from pycvmfs.cli import cache, keys, mount, publish, read, whitelist

    for module in (keys, publish, whitelist, read, mount, cache):
        for command in module.COMMANDS:
            cli.add_command(command)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; library errors become one clear line on stderr and exit code 1."""
    _register()
    try:
        cli.main(args=argv, prog_name="pycvmfs", standalone_mode=False)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
