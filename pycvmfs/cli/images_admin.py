"""Image repository administration: `pycvmfs ingest`, `pycvmfs wishlist convert|loop`,
`pycvmfs webhook serve`, `pycvmfs images remove|list`."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import shlex
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar, cast

import click

from pycvmfs.cli.progress import IngestProgressDisplay
from pycvmfs.cli.storage_options import StorageArg, storage_options
from pycvmfs.errors import ConfigError, NotFoundError
from pycvmfs.format.chunking import DEFAULT_CHUNK_PARAMS
from pycvmfs.publisher.pipeline import Settings
from pycvmfs.publisher.publish import PublishOptions

if TYPE_CHECKING:  # the image modules load when a command runs
    from pycvmfs.images.ingest import IngestOptions

F = TypeVar("F", bound=Callable[..., Any])


class ImageNotFoundError(NotFoundError):
    """`images remove` named an image the repository does not hold."""

EXIT_INTERRUPTED = 130  # as cli.main gives any command stopped by Ctrl-C
MAX_SECONDS = 7 * 24 * 3600.0  # waits longer than a week are typing errors (inf overflows)


class Seconds(click.FloatRange):
    """A wait in seconds, 0 to MAX_SECONDS. FloatRange alone lets `nan` through (every
    comparison with it is false), and `inf` would overflow the wait."""

    name = "seconds"

    def __init__(self) -> None:
        super().__init__(min=0, max=MAX_SECONDS)

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return number


@dataclass(frozen=True, slots=True)
class RepositoryArgs:
    """The options every image command shares, gathered by `_repository_options`."""

    fqrn: str | None
    storage: StorageArg
    keys_dir: Path
    work: Path | None
    platform: str
    notify_file: Path | None
    username: str | None
    password: str | None
    skip_layers: bool
    staged: str  # a StagedPolicy value: what to do with an earlier ingest's unpublished changes


def _repository_options(*, repo_required: bool) -> Callable[[F], F]:
    """Add the shared options; the command receives them as one `repo_args`."""
    def decorate(function: F) -> F:
        options = [
            click.option("--repo", "fqrn", required=repo_required, default=None,
                         help="Repository name, e.g. images.example.org."
                         + ("" if repo_required else " [default: the wishlist's cvmfs_repo]")),
            click.option("--keys-dir", required=True,
                         type=click.Path(file_okay=False, path_type=Path)),
            click.option("--work", type=click.Path(file_okay=False, path_type=Path),
                         default=None,
                         help="Working tree of the repository's contents "
                         "[default: STORAGE.work; needed with an s3:// --storage]."),
            click.option("--platform", default="linux/amd64", show_default=True,
                         help="Platform to pick from a multi-arch image."),
            click.option("--notify", "notify_file",
                         type=click.Path(dir_okay=False, path_type=Path), default=None,
                         help="Append one JSON object per event to this file."),
            click.option("--username", envvar="PYCVMFS_REGISTRY_USER", default=None,
                         help="Registry user (or PYCVMFS_REGISTRY_USER)."),
            click.option("--password", envvar="PYCVMFS_REGISTRY_PASSWORD", default=None,
                         help="Registry password (better: PYCVMFS_REGISTRY_PASSWORD)."),
            click.option("--skip-layers", is_flag=True,
                         help="Do not write .layers/XX/DIGEST/layerfs trees (they need root "
                         "for whiteouts)."),
            click.option("--resume", "staged", flag_value="resume",
                         help="Publish the changes an earlier, failed ingest staged in the "
                         "working tree together with this command's [default: refuse "
                         "to start while there are any]."),
            click.option("--discard-staged", "staged", flag_value="discard",
                         help="Undo the changes an earlier, failed ingest staged in the "
                         "working tree before starting."),
        ]

        @functools.wraps(function)
        def command(**kwargs: Any) -> Any:
            shared = {name: kwargs.pop(name) for name in RepositoryArgs.__slots__}
            shared["staged"] = shared["staged"] or "refuse"
            return function(repo_args=RepositoryArgs(**shared), **kwargs)

        for option in reversed(options):
            command = option(command)
        return cast(F, storage_options()(command))

    return decorate


def _work_tree(args: RepositoryArgs) -> Path:
    """--work, by default beside a directory storage (an S3 storage has no beside)."""
    if args.work is not None:
        return args.work
    if args.storage.is_s3:
        raise ConfigError(f"--storage {args.storage.value} needs --work DIR: the working tree "
                          "of the repository's contents is kept on this machine")
    storage = args.storage.path
    return storage.with_name(storage.name + ".work")


@contextmanager
def _ingest_options(args: RepositoryArgs, fqrn: str | None = None, *, echo: bool = True,
                    progress: bool = True, create_work: bool = True
                    ) -> Iterator[IngestOptions]:
    """The commands' IngestOptions (for repository `fqrn`, default `args.fqrn`); with
    `progress`, a display on stderr while the command runs if stderr is a terminal (else
    none: logs, pipes and the notify file stay clean). The working tree (`create_work`)
    and the notify file are made here, so a path that cannot be written is named with the
    option to change."""
    from pycvmfs.images.ingest import IngestOptions
    from pycvmfs.images.manifest import Platform
    from pycvmfs.images.staging import StagedPolicy

    work = _work_tree(args)
    if create_work:
        try:
            work.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the working tree {work}: {exc.strerror} "
                              "(choose a writable --work, or a --storage whose parent "
                              "directory is writable)") from None
    try:
        log: TextIO | None = (open(args.notify_file, "a")  # noqa: SIM115
                              if args.notify_file else None)
    except OSError as exc:
        raise ConfigError(f"cannot open the --notify file {args.notify_file}: "
                          f"{exc.strerror} (choose a writable file)") from None
    lock = threading.Lock()

    def notify(event: dict[str, object]) -> None:
        with lock:
            if log is not None:
                record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          "pid": os.getpid(), **event}
                log.write(json.dumps(record, sort_keys=True) + "\n")
                log.flush()
            if event["action"] == "staged":
                what = {"resume": "publishing them too (--resume)",
                        "discard": "discarded them (--discard-staged)"}
                click.echo(f"found {event['message']}: {what.get(str(event['policy']), '')}",
                           err=True)
            if event["action"] == "warning":
                click.echo(f"warning: {event.get('image', '')}: {event.get('message')}",
                           err=True)
            if echo and event["action"] == "end_image":
                state = "already there" if event.get("skipped") else event.get("status")
                click.echo(f"{event['image']}: {state}")

    display = IngestProgressDisplay() if progress else None
    try:
        storage = args.storage.for_publish()
        closing = ExitStack()
        if not isinstance(storage, Path):
            closing.callback(storage.close)
        publish = PublishOptions(fqrn=fqrn or args.fqrn or "", storage=storage, source=work,
                                 keys_dir=args.keys_dir,
                                 settings=Settings(chunking=DEFAULT_CHUNK_PARAMS))
        with closing, nullcontext() if display is None else display:
            yield IngestOptions(publish, platform=Platform.parse(args.platform),
                                username=args.username, password=args.password,
                                notify=notify, layer_trees=not args.skip_layers,
                                staged=StagedPolicy(args.staged),
                                progress=display if display and display.enabled else None)
    finally:
        if log is not None:
            log.close()


@contextmanager
def _partial_results(fqrn: str) -> Iterator[None]:
    """When some images failed, say what the others published before the error."""
    from pycvmfs.images.ingest import IngestError

    try:
        yield
    except IngestError as exc:
        _echo_result(fqrn, exc.result.published)
        raise


def _settled_at_start(options: IngestOptions) -> IngestOptions:
    """For a command that ingests again and again (a loop, a server): the keys and storage
    are checked once, now (preflight.py), and what an earlier command staged is settled
    as asked; later rounds publish what their own failed rounds staged (their retry)."""
    from pycvmfs.images.ingest import STAGED_FIX, work_tree_lock
    from pycvmfs.images.preflight import check_can_publish
    from pycvmfs.images.staging import StagedPolicy, StagingJournal

    check_can_publish(options.publish)
    work = options.publish.source
    with work_tree_lock(work):
        staged = StagingJournal(work).settle(options.staged, fix=STAGED_FIX)
    if staged is not None:
        options.notify({"action": "staged", "policy": options.staged.value,
                        "images": staged.images, "message": staged.describe()})
    return dataclasses.replace(options, staged=StagedPolicy.RESUME)


def _echo_result(fqrn: str, published: Any) -> None:
    if published is None:
        click.echo("nothing new: no revision published")
    else:
        click.echo(f"published {fqrn} revision {published.manifest.revision}: "
                   f"{published.objects_written} new objects "
                   f"({published.bytes_written / 1e6:.1f} MB stored)")


# -- ingest -----------------------------------------------------------------------------


@click.command("ingest")
@click.argument("images", nargs=-1, required=True, metavar="IMAGE...")
@_repository_options(repo_required=True)
@click.option("--as", "name", default=None, metavar="REGISTRY/REPOSITORY:TAG",
              help="Public name of a local image (oci:, docker-archive:); one IMAGE only.")
@click.option("--start-set", "start_sets", multiple=True, metavar="'CMD ARGS'",
              help="Run CMD once in each newly unpacked image (bubblewrap, no network) and "
              "publish the files it opens as a file bundle triggered by the first "
              "(repeatable).")
@click.option("--start-set-timeout", type=Seconds(), default=60, show_default=True,
              help="Seconds a --start-set command may run before it is stopped.")
def ingest_command(images: tuple[str, ...], repo_args: RepositoryArgs,
                   name: str | None, start_sets: tuple[str, ...],
                   start_set_timeout: float) -> None:
    """Ingest IMAGE... (docker://HOST/NAME:TAG[@DIGEST], oci:DIR:TAG,
    docker-archive:FILE) into the repository and publish once."""
    from pycvmfs.images.ingest import ingest

    if name is not None and len(images) != 1:
        raise click.BadParameter("--as names exactly one IMAGE", param_hint="--as")
    commands = tuple(_start_set_command(text) for text in start_sets)
    with _ingest_options(repo_args) as base, _partial_results(base.publish.fqrn):
        options = dataclasses.replace(base, start_sets=commands,
                                      start_set_timeout=start_set_timeout)
        result = ingest(list(images), options, names={images[0]: name} if name else None)
    _echo_result(options.publish.fqrn, result.published)


def _start_set_command(text: str) -> tuple[str, ...]:
    """`--start-set 'CMD ARGS'` split as a shell would (quotes, no expansion)."""
    try:
        words = tuple(shlex.split(text))
    except ValueError as exc:
        raise click.BadParameter(f"{text!r}: {exc}", param_hint="--start-set") from None
    if not words:
        raise click.BadParameter("an empty command", param_hint="--start-set")
    return words


# -- wishlist ---------------------------------------------------------------------------


@click.group("wishlist")
def wishlist_group() -> None:
    """DUCC v1 wishlists: every image listed (tag globs expanded) into the repository."""


def _wishlist_repo(wishlist_file: Path, fqrn: str | None) -> str:
    from pycvmfs.images.wishlist import load_wishlist

    return fqrn or load_wishlist(wishlist_file).cvmfs_repo


@wishlist_group.command("convert")
@click.argument("wishlist_file", metavar="WISHLIST",
                type=click.Path(dir_okay=False, exists=True, path_type=Path))
@_repository_options(repo_required=False)
def wishlist_convert_command(wishlist_file: Path, repo_args: RepositoryArgs) -> None:
    """Ingest every image of WISHLIST and publish once."""
    from pycvmfs.images.wishlist import convert

    repo = _wishlist_repo(wishlist_file, repo_args.fqrn)
    with _ingest_options(repo_args, repo) as options, _partial_results(repo):
        result = convert(wishlist_file, options)
    _echo_result(repo, result.published)


@wishlist_group.command("loop")
@click.argument("wishlist_file", metavar="WISHLIST",
                type=click.Path(dir_okay=False, exists=True, path_type=Path))
@_repository_options(repo_required=False)
@click.option("--interval", type=Seconds(), default=600, show_default=True,
              help="Seconds between the end of one round and the start of the next.")
@click.option("--rounds", type=click.IntRange(min=1), default=None,
              help="Stop after this many rounds [default: run until interrupted].")
def wishlist_loop_command(wishlist_file: Path, repo_args: RepositoryArgs, interval: float,
                          rounds: int | None) -> int:
    """Convert WISHLIST again and again (re-read each round); a failed round is reported
    and the loop goes on."""
    from pycvmfs.images.wishlist import loop

    repo = _wishlist_repo(wishlist_file, repo_args.fqrn)

    def report(number: int, outcome: object) -> None:
        if isinstance(outcome, Exception):
            click.echo(f"round {number}: error: {outcome}", err=True)
        else:
            click.echo(f"round {number}: ", nl=False)
            _echo_result(repo, getattr(outcome, "published", None))

    stop = threading.Event()
    with _ingest_options(repo_args, repo) as given:
        options = _settled_at_start(given)
        try:
            loop(wishlist_file, options, interval=interval, stop=stop, rounds=rounds,
                 on_round=report)
        except KeyboardInterrupt:
            stop.set()
            click.echo("stopped", err=True)
            return EXIT_INTERRUPTED
    return 0


# -- webhook ----------------------------------------------------------------------------


@click.group("webhook")
def webhook_group() -> None:
    """Registry webhooks: pushes ingest images, deletes remove them."""


@webhook_group.command("serve")
@click.option("--listen", default="127.0.0.1:8080", show_default=True, metavar="HOST:PORT")
@click.option("--token", envvar="PYCVMFS_WEBHOOK_TOKEN", required=True,
              help="Requests must carry `Authorization: Bearer TOKEN` "
              "(or PYCVMFS_WEBHOOK_TOKEN).")
@click.option("--queue", "queue_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Durable event queue (SQLite) "
              "[default: STORAGE.webhook-queue.sqlite].")
@click.option("--registry-url", "registry_urls", multiple=True, metavar="[NAME=]URL",
              help="A registry to act for (repeatable): events naming URL's host[:port] are "
              "fetched from URL (https://HOST[:PORT], http://..., or a bare HOST[:PORT]); "
              "with NAME=URL, events naming NAME (as the registry calls itself) are fetched "
              "from URL and published under NAME. Events for other registries are ignored.")
@click.option("--wishlist", "wishlist_file", default=None, metavar="FILE",
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Also act for the images this DUCC wishlist lists (tag globs match), "
              "fetched from the registries it names.")
@click.option("--retry-seconds", type=Seconds(), default=5.0, show_default=True,
              help="Wait before retrying a failed item; doubled for each further retry.")
@click.option("--max-retry-seconds", type=Seconds(), default=300.0,
              show_default=True, help="Longest wait between two attempts of an item.")
@click.option("--max-attempts", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--retry-failed", is_flag=True,
              help="Make items that failed for good pending again before serving.")
@_repository_options(repo_required=True)
def webhook_serve_command(listen: str, token: str, queue_file: Path | None,
                          registry_urls: tuple[str, ...], wishlist_file: Path | None,
                          retry_seconds: float, max_retry_seconds: float, max_attempts: int,
                          retry_failed: bool, repo_args: RepositoryArgs) -> int:
    """Accept Docker registry / Harbor events on HOST:PORT for the registries given by
    --registry-url or --wishlist, and apply them to the repository, one transaction at a
    time."""
    from pycvmfs.errors import ConfigError
    from pycvmfs.images.webhook import WebhookService
    from pycvmfs.images.webhook_http import parse_listen
    from pycvmfs.images.webhook_options import WebhookOptions
    from pycvmfs.images.webhook_registries import RegistryAllowlist
    from pycvmfs.images.wishlist import WishlistError, load_wishlist

    if not registry_urls and wishlist_file is None:
        raise click.UsageError("say which registries to act for: --registry-url URL "
                               "(repeatable) or --wishlist FILE")
    wishlist = load_wishlist(wishlist_file) if wishlist_file is not None else None
    if wishlist is not None and wishlist.cvmfs_repo != repo_args.fqrn:
        raise WishlistError(f"{wishlist.source}: field 'cvmfs_repo' is {wishlist.cvmfs_repo!r}, "
                            f"but the repository is {repo_args.fqrn!r}")
    try:
        registries = RegistryAllowlist.build(registry_urls, wishlist)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--registry-url") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    address = parse_listen(listen)
    beside = _work_tree(repo_args) if repo_args.storage.is_s3 else repo_args.storage.path
    queue = queue_file or beside.with_name(beside.name + ".webhook-queue.sqlite")
    # no display: the server logs to stderr, which would tear it
    with _ingest_options(repo_args, echo=False, progress=False) as given:
        options = _settled_at_start(given)
        try:
            service = WebhookService(address, WebhookOptions(
                options, token, queue, registries=registries, retry_seconds=retry_seconds,
                max_retry_seconds=max_retry_seconds, max_attempts=max_attempts))
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot use the webhook queue {queue}: {exc} (choose another "
                              "--queue file)") from None
        except OSError as exc:
            if exc.filename is not None:  # the queue's directory
                raise ConfigError(f"cannot use the webhook queue {queue}: {exc.strerror} "
                                  f"({exc.filename}; choose another --queue file)") from None
            raise ConfigError(f"cannot listen on {listen}: {exc.strerror} (choose another "
                              "--listen port, or an address of this host)") from None
        if retry_failed:
            click.echo(f"{service.queue.requeue_failed()} failed items pending again", err=True)
        host, port = service.address
        click.echo(f"listening on {host}:{port}; queue {queue}; acting for "
                   f"{registries.describe()}", err=True)
        try:
            service.serve_forever()
        except KeyboardInterrupt:
            click.echo("stopped", err=True)
            return EXIT_INTERRUPTED
    return 0


# -- removal ----------------------------------------------------------------------------


@click.group("images")
def images_group() -> None:
    """Images in an image repository."""


@images_group.command("remove")
@click.argument("names", nargs=-1, required=True, metavar="REGISTRY/REPOSITORY:TAG...")
@_repository_options(repo_required=True)
def images_remove_command(names: tuple[str, ...], repo_args: RepositoryArgs) -> None:
    """Remove the images' public symlinks and metadata (and flat trees nothing else
    uses), publish once. Storage objects stay until `pycvmfs gc`."""
    from pycvmfs.images.removal import remove_images

    storage = repo_args.storage.value
    work = _work_tree(repo_args)
    if not repo_args.storage.is_s3 and not repo_args.storage.path.is_dir() \
            and not work.is_dir():
        raise ConfigError(f"no repository storage at {storage} and no working tree at "
                          f"{work}: check --storage (and --work)")
    with _ingest_options(repo_args, create_work=False) as options:
        result = remove_images(list(names), options)
    for name in result.removed:
        click.echo(f"removed {name}")
    if result.removed or result.published is not None or not result.missing:
        _echo_result(options.publish.fqrn, result.published)
    if result.missing:
        raise ImageNotFoundError(
            f"not in the repository: {', '.join(result.missing)} (see what is there: "
            f"pycvmfs images list --mount /cvmfs/{options.publish.fqrn}, or --storage "
            f"{storage} --keys PUBLIC_KEY)")


@images_group.command("list")
@click.option("--storage", default=None, metavar="STORAGE_DIR_OR_URL",
              help="The repository's storage directory or a Stratum-1 URL (read and "
              "verified without mounting; needs --keys).")
@click.option("--mount", "mount_dir", default=None,
              type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="A mounted repository (or an ingest working tree).")
@click.option("--keys", "keys", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Master public key (.pub) or a directory of *.pub, for --storage.")
@click.option("--repo", "fqrn", default=None,
              help="Repository name, for --storage [default: as `pycvmfs ls` finds it].")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of objects.")
def images_list_command(storage: str | None, mount_dir: Path | None, keys: tuple[Path, ...],
                        fqrn: str | None, as_json: bool) -> None:
    """List the images of an image repository: name, tag, manifest digest, size
    (compressed layers), layers and ingest date."""
    from pycvmfs.cli.read import open_repository
    from pycvmfs.images.listing import DirectoryTree, RepositoryTree, list_images

    if (storage is None) == (mount_dir is None):
        raise click.UsageError("give the repository as --storage DIR_OR_URL or --mount PATH")
    if mount_dir is not None:
        images = list_images(DirectoryTree(mount_dir))
    else:
        if not keys:
            raise click.UsageError("--storage needs --keys (the repository's public key)")
        with open_repository(str(storage), keys, fqrn, None, None) as repository:
            images = list_images(RepositoryTree(repository))
    if as_json:
        click.echo(json.dumps([image.as_json() for image in images], indent=1))
        return
    from pycvmfs.images.report import human

    rows = [("NAME", "TAG", "DIGEST", "SIZE", "LAYERS", "INGESTED")] + [
        (i.name, i.tag or "-", i.digest.removeprefix("sha256:")[:12], human(i.size),
         str(i.layers), i.ingested) for i in images]
    widths = [max(len(row[column]) for row in rows) for column in range(6)]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths,
                                                                       strict=True)).rstrip())


COMMANDS = [ingest_command, wishlist_group, webhook_group, images_group]
