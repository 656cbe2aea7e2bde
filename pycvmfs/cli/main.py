"""Entry point: one click group; each subcommand lives in its own module under cli/.

Whatever goes wrong, the user gets one line on stderr and a non-zero exit, never a
traceback: a `PycvmfsError` (named, with the fix) or a click usage error as they are; an
`OSError` nobody named yet as `pycvmfs: error: FILE: REASON` (exit 1); anything else as
`pycvmfs: internal error: ...` (exit 70, EX_SOFTWARE: a bug to report). PYCVMFS_DEBUG=1
adds the traceback. The last two are a net: each case found there gets a named error where
it happens.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

import click

from pycvmfs import __version__
from pycvmfs.errors import PycvmfsError

# command -> module under pycvmfs.cli; a module is imported only when its command runs
# (`pycvmfs mount` need not load the publisher, numpy or the chunker)
COMMAND_MODULES = {"keys": "keys", "publish": "publish", "whitelist": "whitelist",
                   "ls": "read", "cat": "read", "stat": "read",
                   "doctor": "doctor",
                   "mount": "mount", "umount": "mount", "cache": "cache", "ingest": "images_admin",
                   "run": "run", "wishlist": "images_admin", "webhook": "images_admin",
                   "images": "images_admin", "gc": "gc_report", "report": "gc_report",
                   "bundle": "bundle", "status": "status", "metrics": "metrics",
                   "config": "config", "exec": "exec_command", "snapshotter": "snapshotter",
                   "snapshot": "snapshot"}


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
    """CernVM-FS client and publisher.

    Exit status: 0 on success, 1 on a failure (one `pycvmfs: error:` line names the cause
    and the fix), 2 on a usage error, 70 on an internal error (a bug: please report it),
    130 when interrupted; `pycvmfs run` exits with the container's status.

    Shell completion, for bash (zsh_source and fish_source for zsh and fish):

    eval "$(_PYCVMFS_COMPLETE=bash_source pycvmfs)"

    Manual: man pycvmfs, man pycvmfs-COMMAND (e.g. man pycvmfs-images-list).
    """


EXIT_INTERNAL_ERROR = 70  # EX_SOFTWARE (sysexits.h)
DEBUG_VARIABLE = "PYCVMFS_DEBUG"


def one_line(text: object) -> str:
    """A message on one line (some library messages span several)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def describe_os_error(exc: OSError) -> str:
    """`FILE: REASON` (or `FILE -> FILE2: REASON`) from an OSError."""
    reason = exc.strerror or one_line(exc) or type(exc).__name__
    names = [str(name) for name in (exc.filename, exc.filename2) if name is not None]
    return f"{' -> '.join(names)}: {reason}" if names else reason


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; errors become one clear line on stderr (see the module docstring). A
    command that returns an int (`pycvmfs run`) exits with it."""
    return exit_code_of(lambda: cli.main(args=argv, prog_name="pycvmfs",
                                         standalone_mode=False))


def run() -> NoReturn:
    """The `pycvmfs` program: `main`, then exit. Everything still reachable is frozen
    out of the garbage collector first: the interpreter's last collection at exit would
    walk every object of every module the command imported (the client's alone cost a
    background mount 0.1-0.2 s of exit time), for memory the exit frees anyway. Not for
    in-process callers of `main` (tests): frozen objects are never collected."""
    code = main()
    gc.freeze()
    sys.exit(code)


def exit_code_of(command: Callable[[], object]) -> int:
    """Run `command`; its result (an int) or 0, or the error as one line on stderr and
    its exit code (see the module docstring). Also the frame of a forked serving process
    (`cli.mount`), which never returns into the CLI."""
    try:
        result = command()
    except PycvmfsError as exc:
        click.echo(f"pycvmfs: error: {one_line(exc)}", err=True)
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
    except OSError as exc:
        _traceback_if_debugging()
        click.echo(f"pycvmfs: error: {describe_os_error(exc)}", err=True)
        return 1
    except Exception as exc:
        _traceback_if_debugging()
        click.echo(f"pycvmfs: internal error: {type(exc).__name__}: {one_line(exc)} (set "
                   f"{DEBUG_VARIABLE}=1 for the traceback; please report it)", err=True)
        return EXIT_INTERNAL_ERROR
    return result if isinstance(result, int) else 0


def _traceback_if_debugging() -> None:
    if os.environ.get(DEBUG_VARIABLE, "") not in ("", "0"):
        traceback.print_exc()


if __name__ == "__main__":
    run()
