"""`pycvmfs status [MOUNTPOINT...] [--json]`: what each pycvmfs mount is doing.

As `cvmfs_config stat` gives a site, but as the user who mounted, without root and
without a talk socket: each mount answers a stats document on its root
(`observe.mounts`). A mount that does not answer in time (hung, dead) is reported as
such and the command exits 1; the others are shown all the same.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from pycvmfs.observe.mounts import READ_TIMEOUT_S, MountReport, survey

NOT_ANSWERING_EXIT = 1


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def duration(seconds: float) -> str:
    """`3 d 4 h`, `2 h 5 min`, `4 min 7 s`, `12 s`: the two largest units."""
    seconds = max(int(seconds), 0)
    parts = [(seconds // 86400, "d"), (seconds % 86400 // 3600, "h"),
             (seconds % 3600 // 60, "min"), (seconds % 60, "s")]
    while len(parts) > 1 and parts[0][0] == 0:
        parts.pop(0)
    return " ".join(f"{value} {unit}" for value, unit in parts[:2])


def _when(timestamp: int | None, now: float) -> str:
    if not timestamp:
        return "publication time unknown"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))
    return f"published {stamp}, {duration(now - timestamp)} ago"


def _groups(groups: list[list[str]]) -> str:
    return "; ".join("|".join(group) for group in groups) or "none"


def rows(report: MountReport, now: float | None = None) -> list[tuple[str, str]]:
    """The lines `status` shows for one mount, as (label, text)."""
    d = report.document
    if d is None:
        return [("state", f"NOT ANSWERING: {report.problem}")]
    now = time.time() if now is None else now
    cache: dict[str, Any] = d.get("cache", {})
    hits, misses = cache.get("hits", 0), cache.get("misses", 0)
    quota = cache.get("quota_bytes", -1)
    used = cache.get("used_bytes", 0)
    usage = (f"{size(used)} of {size(quota)} ({100 * used / quota:.1f} %)" if quota > 0
             else "not tracked (no quota: CVMFS_QUOTA_LIMIT=-1)")
    hosts: list[str] = d.get("hosts", [])
    state = "online"
    if d.get("offline"):
        why = d.get("offline_reason") or "no Stratum-1 answered at mount time"
        state = f"OFFLINE: serving the cached revision ({why})"
    tag = f", tag {d['tag']}" if d.get("tag") else ""
    return [
        ("repository", d.get("fqrn", report.fqrn)),
        ("revision", f"{d.get('revision')}{tag} ({_when(d.get('revision_timestamp'), now)})"),
        ("root hash", str(d.get("root_hash"))),
        ("state", state),
        ("next check", f"in {d.get('expires_min')} min" if str(d.get("expires_min", ""))
         .isdigit() else str(d.get("expires_min"))),
        ("Stratum-1", f"{d.get('host')} (ring: {'; '.join(hosts) or 'none'})"),
        ("proxy", f"{d.get('proxy')} (groups: {_groups(d.get('proxy_groups', []))}; "
                  f"fallback: {_groups(d.get('fallback_proxy_groups', []))})"),
        ("cache", f"{cache.get('directory')} (base {cache.get('base')})"),
        ("cache usage", usage),
        ("pinned catalogs", f"{cache.get('pinned', 0)} ({size(cache.get('pinned_bytes', 0))})"),
        ("hit rate", f"{100 * hits / (hits + misses):.1f} % ({hits} hits, {misses} misses)"
         if hits + misses else "n/a (nothing read yet)"),
        ("downloads", f"{d.get('downloads', 0)}, {size(d.get('download_bytes', 0))}, "
                      f"{d.get('download_errors', 0)} failed attempts"),
        ("open files", f"{d.get('open_files', 0)} (opened so far: {d.get('files_opened', 0)}; "
                       f"I/O errors: {d.get('io_errors', 0)})"),
        ("catalogs", f"{d.get('catalogs', 0)} loaded"),
        ("uptime", duration(float(d.get("uptime_s", 0)))),
        ("pid", str(d.get("pid"))),
    ]


def as_json(report: MountReport) -> dict[str, Any]:
    return {"mountpoint": report.mountpoint, "fqrn": report.fqrn,
            "answering": report.answering, "problem": report.problem,
            "stats": report.document}


def _show(reports: list[MountReport]) -> None:
    """A table on a terminal; aligned plain lines for a pipe (whole, grep-able)."""
    if not sys.stdout.isatty():
        for index, report in enumerate(reports):
            click.echo(("\n" if index else "") + f"{report.mountpoint}  {report.fqrn}")
            for label, text in rows(report):
                click.echo(f"  {label:<16} {text}")
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False)
    for index, report in enumerate(reports):
        if index:
            console.print()
        console.print(f"[bold]{escape(report.mountpoint)}[/bold]  {escape(report.fqrn)}")
        table = Table(show_header=False, box=None, pad_edge=False, padding=(0, 2, 0, 2))
        table.add_column(style="dim", no_wrap=True)
        table.add_column(overflow="fold")
        for label, text in rows(report):
            table.add_row(label, text, style=None if report.answering else "red")
        console.print(table, markup=False)


@click.command("status")
@click.argument("mountpoints", nargs=-1, metavar="[MOUNTPOINT]...")
@click.option("--json", "as_json_", is_flag=True, help="One JSON array for machines.")
@click.option("--timeout", type=click.FloatRange(0.1, 600), default=READ_TIMEOUT_S,
              show_default=True, help="Seconds to wait for a mount before calling it hung.")
def status(mountpoints: tuple[str, ...], as_json_: bool, timeout: float) -> int:
    """Revision, servers, cache, counters of each pycvmfs mount (all of yours when none
    is given). Exits 1 if a mount does not answer."""
    reports = survey(list(mountpoints) or None, timeout_s=timeout)
    if as_json_:
        click.echo(json.dumps([as_json(r) for r in reports], indent=2))
    elif not reports:
        click.echo("no pycvmfs mounts", err=True)
    else:
        _show(reports)
    return NOT_ANSWERING_EXIT if any(not r.answering for r in reports) else 0


COMMANDS = [status]
