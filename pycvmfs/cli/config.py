"""`pycvmfs config show FQRN`: every effective parameter and where it came from.

As the reference's `cvmfs_config showconfig` (`KEY=VALUE    # from SOURCE`), for the
hierarchy `pycvmfs mount` reads (`config.inspect_config`, with the same `--config` and `-o`),
with the line of each file, `default` for built-in values and `-o option` for overrides.
Keys pycvmfs does not use are marked; then every problem, one line each on stderr
(errors, warnings, notes), and exit 1 when there is an error: what a mount would refuse.
`--json` gives the same as one object.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from pycvmfs.cli.mount import overrides_of

_SAFE = re.compile(r"[A-Za-z0-9/:._,@=+-]*")  # the reference quotes anything else


def shell_word(value: str) -> str:
    """`value` as a shell word: bare when it has no special character, else quoted."""
    if _SAFE.fullmatch(value):
        return value
    return "'" + value.replace("'", "'\\''") + "'"


@click.group("config")
def config_group() -> None:
    """Inspect the client configuration."""


@config_group.command("show")
@click.argument("fqrn")
@click.option("-o", "options", multiple=True, metavar="KEY=VALUE[,...]",
              help="Overrides, as for pycvmfs mount.")
@click.option("--config", "config_files", multiple=True,
              type=click.Path(dir_okay=True, path_type=Path),
              help="Extra configuration file(s), as for pycvmfs mount.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def show(fqrn: str, options: tuple[str, ...], config_files: tuple[Path, ...],
         as_json: bool) -> int:
    """Print every effective parameter of FQRN with the file and line it came from (or
    default, -o option), then every problem; exit 1 when a mount would be refused."""
    from pycvmfs.config import Severity, inspect_config
    from pycvmfs.config_keys import is_checked, is_ignored, is_known, shown_origin

    report = inspect_config(fqrn, extra_files=config_files, overrides=overrides_of(options))

    def status(key: str) -> str:
        if not is_known(key):
            return "unknown"
        return "ignored" if is_ignored(key) else "used"

    values, origins = dict(report.values), dict(report.origins)
    if report.config is not None and report.config.http_proxy_defaulted:
        values["CVMFS_HTTP_PROXY"] = report.config.http_proxy  # what the mount uses
        origins["CVMFS_HTTP_PROXY"] = "<pycvmfs: unset or empty means DIRECT>"
    keys = sorted(k for k in values if is_checked(k) and k != "CVMFS_FQRN")
    if as_json:
        click.echo(json.dumps({
            "fqrn": fqrn,
            "parameters": {k: {"value": values[k], "origin": shown_origin(origins[k]),
                               "status": status(k)} for k in keys},
            "problems": [{"severity": str(p.severity), "message": p.message}
                         for p in report.problems],
            "config_root": str(report.config_root) if report.config_root else None,
            "files_read": [str(path) for path in report.files_read],
            "mountable": report.config is not None,
        }, indent=2))
    else:
        click.echo(f"CVMFS_REPOSITORY_NAME={fqrn}")
        for key in keys:
            mark = {"used": "", "ignored": " (not used by pycvmfs)",
                    "unknown": " (unknown parameter)"}[status(key)]
            click.echo(f"{key}={shell_word(values[key])}    # from "
                       f"{shown_origin(origins[key])}{mark}")
        for problem in report.problems:
            click.echo(f"pycvmfs: {problem.severity}: {problem.message}", err=True)
    return 1 if report.of(Severity.ERROR) else 0


COMMANDS = [config_group]
