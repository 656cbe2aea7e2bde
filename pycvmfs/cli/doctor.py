"""`pycvmfs doctor [FQRN]`: can this node mount, as the user running it? One line per
check; the checks themselves are `pycvmfs.doctor`'s, this module only prints."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pycvmfs.doctor.result import CheckResult, Level, exit_code, worst

EPILOG = """\b
Without FQRN: /dev/fuse, fusermount3, user namespaces (`pycvmfs exec`), kernel FUSE
features, libfuse3, the configuration directory and the cache base.
With FQRN also: CVMFS_SERVER_URL, public keys, each Stratum-1 through each proxy (timed,
about 10 s at most), the verified trust chain, whitelist expiry and the clock.
\b
Exit status: 0 every check ok, 3 warnings only, 1 at least one failure, 2 usage error."""

NAME_WIDTH = 16  # longer names (route URLs) push their line out


def format_line(result: CheckResult, width: int) -> str:
    line = f"{result.level.label:<4}  {result.name:<{width}}  {result.found}"
    return f"{line}  -> fix: {result.fix}" if result.fix else line


@click.command("doctor", epilog=EPILOG)
@click.argument("fqrn", required=False)
@click.option("--config", "config_files", multiple=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Extra configuration file, read after the /etc/cvmfs hierarchy "
                   "(repeatable).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of lines.")
def doctor_command(fqrn: str | None, config_files: tuple[Path, ...], as_json: bool) -> int:
    """Check that this node can mount (FQRN: that repository), as this user."""
    from pycvmfs.doctor.runner import run_doctor

    results = run_doctor(fqrn, extra_files=config_files)
    code = exit_code(results)
    if as_json:
        click.echo(json.dumps({"fqrn": fqrn, "result": worst(results).label,
                               "exit_code": code,
                               "checks": [r.as_dict() for r in results]}, indent=1))
        return code
    width = min(NAME_WIDTH, max(len(r.name) for r in results))
    for result in results:
        click.echo(format_line(result, width))
    counts = {level: sum(r.level is level for r in results) for level in Level}
    click.echo(f"doctor: {counts[Level.OK]} ok, {counts[Level.WARN]} warn, "
               f"{counts[Level.FAIL]} fail")
    return code


COMMANDS = [doctor_command]
