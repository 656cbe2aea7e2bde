"""`pycvmfs metrics [MOUNTPOINT...] [--listen HOST:PORT]`: Prometheus metrics of the
pycvmfs mounts (`observe.openmetrics`), printed once as OpenMetrics text or served on
`/metrics`; each scrape reads the mounts live, as the user running the command."""

from __future__ import annotations

import click

from pycvmfs.errors import ConfigError
from pycvmfs.observe.mounts import READ_TIMEOUT_S


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:PORT` for IPv6) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--listen {text}: give HOST:PORT, e.g. 127.0.0.1:9868")
    return host, int(port)


def serve(host: str, port: int, mountpoints: list[str] | None, timeout_s: float) -> None:
    """Serve `/metrics` until interrupted (Ctrl-C, SIGTERM)."""
    import signal
    import socket
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app

    from pycvmfs.observe.openmetrics import registry

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    app = make_wsgi_app(registry(mountpoints, timeout_s))
    try:
        httpd = make_server(host, port, app, Server, handler_class=Quiet)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; "
                          "choose another address or port") from exc
    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM (a service manager) stops as Ctrl-C does

    signal.signal(signal.SIGTERM, stop)
    click.echo(f"serving metrics on http://{host}:{port}/metrics (Ctrl-C stops)", err=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


@click.command("metrics")
@click.argument("mountpoints", nargs=-1, metavar="[MOUNTPOINT]...")
@click.option("--listen", metavar="HOST:PORT",
              help="Serve /metrics over HTTP for Prometheus instead of printing once.")
@click.option("--timeout", type=click.FloatRange(0.1, 600), default=READ_TIMEOUT_S,
              show_default=True, help="Seconds to wait for a mount before calling it hung.")
def metrics(mountpoints: tuple[str, ...], listen: str | None, timeout: float) -> None:
    """OpenMetrics text (ending `# EOF`) of each pycvmfs mount (all of yours when none
    is given): downloads by Stratum-1, proxy errors, cache, open files, FUSE latency."""
    chosen = list(mountpoints) or None
    if listen is not None:
        host, port = parse_listen(listen)
        if chosen:
            from pycvmfs.observe.mounts import survey

            survey(chosen, timeout_s=timeout)  # a wrong mount point fails now, not per scrape
        serve(host, port, chosen, timeout)
        return
    from pycvmfs.observe.openmetrics import openmetrics_text

    click.echo(openmetrics_text(chosen, timeout), nl=False)


COMMANDS = [metrics]
