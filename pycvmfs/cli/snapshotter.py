"""`pycvmfs snapshotter serve`: containerd's remote snapshotter over a pycvmfs mount of an
image repository (pycvmfs/snapshotter/)."""

from __future__ import annotations

from pathlib import Path

import click

DEFAULT_STATE = Path("/var/lib/pycvmfs-snapshotter")


@click.group("snapshotter")
def snapshotter_group() -> None:
    """containerd remote snapshotter: containers start from the layers in the repository."""


@snapshotter_group.command("serve")
@click.option("--address", required=True, metavar="unix:///PATH.sock",
              help="Unix socket to serve on; containerd's [proxy_plugins.NAME] address is PATH.")
@click.option("--repository", required=True, metavar="MNT",
              type=click.Path(file_okay=False, path_type=Path),
              help="Mountpoint of the image repository (its .layers/ are used in place).")
@click.option("--state", default=DEFAULT_STATE, show_default=True, metavar="DIR",
              type=click.Path(file_okay=False, path_type=Path),
              help="Metadata database and local snapshot directories.")
def serve_command(address: str, repository: Path, state: Path) -> None:
    """Serve containerd's snapshots API on ADDRESS until SIGTERM or Ctrl-C. Layers found in
    the repository are used from the mount without download; any other layer is unpacked
    by containerd into a local overlay snapshot under --state."""
    import logging

    from pycvmfs.snapshotter.server import serve, socket_path

    logging.basicConfig(level=logging.INFO, format="pycvmfs snapshotter: %(message)s")
    serve(socket_path(address), repository, state)


@snapshotter_group.command("pull")
@click.argument("image")
@click.option("--containerd", "address", required=True, metavar="unix:///PATH.sock",
              help="containerd's gRPC socket.")
@click.option("--repository", required=True, metavar="MNT",
              type=click.Path(file_okay=False, path_type=Path),
              help="Mountpoint of the image repository the snapshotter serves.")
@click.option("--namespace", default="default", show_default=True,
              help="containerd namespace to register the image in.")
@click.option("--plain-http", is_flag=True,
              help="Talk to the registry over http (loopback registries always are).")
def pull_command(image: str, address: str, repository: Path, namespace: str,
                 plain_http: bool) -> None:
    """Register IMAGE in containerd without downloading its layers: manifest and config
    from the registry, each layer's snapshot adopted by the pycvmfs snapshotter from the
    repository; a layer the repository lacks is downloaded and unpacked locally. Then
    `ctr run --snapshotter pycvmfs IMAGE ID CMD` runs it."""
    from pycvmfs.snapshotter.pull import pull
    from pycvmfs.snapshotter.server import socket_path

    plan, downloaded = pull(image, socket_path(address), repository, namespace=namespace,
                            plain_http=plain_http)
    click.echo(f"{plan.name}: {plan.manifest.digest}, "
               f"{len(plan.layers) - len(downloaded)} of {len(plan.layers)} layers from "
               f"{repository}, {len(downloaded)} downloaded")


COMMANDS = [snapshotter_group]
