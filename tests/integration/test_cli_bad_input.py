"""Every CLI command with bad input: one named error line, a non-zero exit, no traceback
(issue 9, class 9).

Each case runs `python -m pycvmfs ...` in a subprocess (bounded by COMMAND_TIMEOUT_S) with
missing paths, a file where a directory is expected and the reverse, garbage keys,
configurations and wishlists, /proc and /dev paths, bad URLs and -o values, numbers out of
range, an address in use, unwritable outputs, and (as `nobody`) unreadable files and a
/dev/fuse the user may not open. It must exit 1 with exactly one `pycvmfs: error:` line,
or 2 with exactly one click usage `Error:` line, and that line must name the cause; exit
70 (`internal error`) or a traceback fails the case. `test_every_command_is_covered` keeps
the matrix complete when commands are added.

No server here ever answers (127.0.0.1:1 refuses), so no case can mount or publish
anything by accident; outputs go to a scratch directory or to paths that cannot be
written. The cases run four at a time (~0.3-1 s each).
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from pycvmfs.cli.main import COMMAND_MODULES, cli
from tests.integration.test_client_unprivileged import (
    SYSTEM_PYTHON,
    USER,
    missing_requirement,
    python_path,
)
from tests.mounting import DEMO_FQRN, DEMO_KEY, DEMO_REPO, ROOT
from tests.servers import shared_scratch

COMMAND_TIMEOUT_S = 60.0
WORKERS = 4
FUSE_DEVICE = "/dev/fuse"


@dataclass(frozen=True)
class Case:
    """`args` (with {placeholders} from `Scratch.paths`) must fail naming `names`."""

    id: str
    args: tuple[str, ...]
    names: str
    as_user: bool = False  # run as `nobody` (unreadable files, /dev/fuse)


def case(id: str, command: str, names: str, *, as_user: bool = False) -> Case:
    """`command` is split on spaces; in an argument `~` stands for a space, and `''`
    alone for the empty string."""
    args = tuple("" if arg == "''" else arg.replace("~", " ") for arg in command.split())
    return Case(id, args, names, as_user=as_user)


PUBLISH = ("publish {empty} --repo demo.pycvmfs.org --storage {s}/published-{case} "
           "--keys-dir {keys}")  # a storage per case: publishers lock it
READ = "{repo} --keys {pub}"
MOUNT = "mount demo.pycvmfs.org {s}/mnt --config {conf}"
IMAGES = "--repo demo.pycvmfs.org --storage {s}/images-{case} --keys-dir {keys}"  # own lock
WEBHOOK = f"webhook serve --token t --registry-url 127.0.0.1:5000 {IMAGES}"
STORAGE = "--storage {storage} --repo demo.pycvmfs.org"

CASES = [
    # keys
    case("keys-dir-is-file", "keys create demo.x --keys-dir {garbage}", "is a file"),
    case("keys-dir-in-proc", "keys create demo.x --keys-dir /proc", "--keys-dir"),
    case("keys-bad-name", "keys create ../x --keys-dir {s}/keys", "repository name"),
    case("keys-dir-unwritable", "keys create demo.x --keys-dir /root/pycvmfs-keys", "/root",
         as_user=True),
    # publish
    case("publish-source-missing", PUBLISH.replace("{empty}", "{nope}"), "{nope}"),
    case("publish-storage-in-proc", PUBLISH.replace("{s}/published-{case}", "/proc/nope"),
         "/proc/nope"),
    case("publish-garbage-keys", PUBLISH.replace("{keys}", "{garbkeys}"), "not a PEM"),
    case("publish-chunk-sizes", PUBLISH + " --chunk-sizes 1,2,x", "--chunk-sizes"),
    case("publish-owner-too-big", PUBLISH + " --owner 99999999999:1", "--owner"),
    case("publish-storage-unwritable",
         PUBLISH.replace("{s}/published-{case}", "/root/pycvmfs-st"),
         "/root/pycvmfs-st", as_user=True),
    # whitelist
    case("whitelist-days-range",
         "whitelist sign --keys-dir {keys} --repo demo.pycvmfs.org --storage {s}/wl "
         "--days 99999999999", "--days"),
    case("whitelist-storage-in-proc",
         "whitelist sign --keys-dir {keys} --repo demo.pycvmfs.org --storage /proc/nope",
         "/proc/nope"),
    # doctor (problems it finds are its report, not errors), status, metrics
    case("doctor-unknown-option", "doctor --json --nope", "--nope"),
    case("status-not-a-mount", "status {empty}", "is not a mount point"),
    case("metrics-not-a-mount", "metrics {empty}", "is not a mount point"),
    case("metrics-listen-bad-port", "metrics --listen 127.0.0.1:99999", "127.0.0.1:99999"),
    # exec
    case("exec-bad-repository", "exec ../x -- true", "is not a repository name"),
    case("exec-no-command", "exec demo.pycvmfs.org true", "expected REPO"),
    # snapshotter
    case("snapshotter-serve-tcp", "snapshotter serve --address tcp://127.0.0.1:1 "
         "--repository {empty}", "tcp://127.0.0.1:1"),
    case("snapshotter-pull-no-layers", "snapshotter pull example.org/x:1 --containerd "
         "unix://{s}/none.sock --repository {empty}", "ingested with layer trees"),
    # snapshot
    case("snapshot-source-unreachable", "snapshot http://127.0.0.1:1/cvmfs/demo.pycvmfs.org "
         "--storage {s}/replica-{case} --keys {pub}", "127.0.0.1:1"),
    case("snapshot-wrong-key", "snapshot {repo} --fqrn demo.pycvmfs.org --storage "
         "{s}/replica-{case} --keys {garbkeys}", "not a PEM"),
    case("snapshot-storage-is-file", "snapshot {repo} --storage {garbage} --keys {pub}",
         "is a file"),
    case("snapshot-s3-unreachable", "snapshot {repo} --fqrn demo.pycvmfs.org --storage s3:///x "
         "--s3-config {s3_unreachable} --keys {pub}", "127.0.0.1:1"),
    # ls, cat, stat
    case("ls-repo-missing", "ls {nope} --keys {pub}", "does not exist"),
    case("ls-garbage-key", "ls {repo} --keys {garbage}", "not a PEM"),
    case("ls-key-dev-null", "ls {repo} --keys /dev/null", "/dev/null"),
    case("ls-repo-is-proc", "ls /proc --keys {pub} --fqrn demo.pycvmfs.org", "/proc"),
    case("ls-url-refused", "ls http://127.0.0.1:1/cvmfs/demo.pycvmfs.org --keys {pub}",
         "127.0.0.1:1"),
    case("ls-url-bad-port", "ls http://127.0.0.1:99999/x --keys {pub}", "99999"),
    case("ls-proxy-unclosed-bracket",
         "ls http://127.0.0.1:1/x --keys {pub} --proxy http://[::1;DIRECT", "--proxy"),
    case("ls-key-unreadable", "ls {repo} --keys {unreadable_key}", "not readable",
         as_user=True),
    case("cat-directory", f"cat {READ} /docs", "not a regular file"),
    case("stat-path-missing", f"stat {READ} /nope", "/nope"),
    # mount
    case("mount-point-missing", MOUNT.replace("{s}/mnt", "{nope}"), "not a directory"),
    case("mount-point-is-proc", MOUNT.replace("{s}/mnt", "/proc"), "already a mount point"),
    case("mount-config-is-dir", MOUNT.replace("{conf}", "{empty}"), "is a directory"),
    case("mount-config-garbage", MOUNT.replace("{conf}", "{garbage}"), "not KEY=VALUE lines"),
    case("config-show-bad-name", "config show ../x", "is not a repository name"),
    case("config-show-config-missing", "config show demo.pycvmfs.org --config {nope}",
         "no such file"),
    case("config-show-bad-value", "config show demo.pycvmfs.org -o CVMFS_TIMEOUT=x",
         "CVMFS_TIMEOUT"),
    case("mount-config-unreadable", MOUNT.replace("{conf}", "{unreadable_conf}"),
         "not readable", as_user=True),
    case("mount-option-not-a-number", MOUNT + " -o CVMFS_QUOTA_LIMIT=abc",
         "CVMFS_QUOTA_LIMIT"),
    case("mount-key-garbage", MOUNT + " -o CVMFS_PUBLIC_KEY={garbage}", "not a PEM"),
    case("mount-backend-unknown", MOUNT + " --backend nope", "--backend"),
    case("mount-cache-base-in-proc", MOUNT + " -o CVMFS_CACHE_BASE=/proc/nope", "/proc/nope"),
    case("mount-server-refused", MOUNT, "127.0.0.1:1"),
    case("mount-proxy-unclosed-bracket", MOUNT + " -o CVMFS_HTTP_PROXY=http://[::1;DIRECT",
         "CVMFS_HTTP_PROXY"),
    case("mount-dev-fuse-closed", MOUNT.replace("{s}/mnt", "{user_mnt}"),
         "chmod 666 /dev/fuse", as_user=True),
    # umount
    case("umount-not-mounted", "umount {empty}", "not mounted"),
    case("umount-file", "umount {garbage}", "not mounted"),
    case("umount-proc", "umount /proc", "not a FUSE mount", as_user=True),
    # cache
    case("cache-dir-missing", "cache status --dir {nope}", "no cache directory"),
    case("cache-dir-is-file", "cache status --dir {garbage}", "is a file"),
    case("cache-no-target", "cache status", "--dir"),
    case("cache-clean-in-proc", "cache clean --dir /proc/nope", "/proc/nope"),
    case("cache-verify-missing", "cache verify --dir {nope}", "no cache directory"),
    case("cache-base-dev-null",
         "cache status demo.pycvmfs.org -o CVMFS_SERVER_URL=http://127.0.0.1:1/@fqrn@ "
         "-o CVMFS_PUBLIC_KEY={pub} -o CVMFS_CACHE_BASE=/dev/null", "/dev/null"),
    # ingest
    case("ingest-registry-refused", f"ingest docker://127.0.0.1:1/x:1 {IMAGES}",
         "127.0.0.1:1"),
    case("ingest-archive-garbage", f"ingest docker-archive:{{garbage}} {IMAGES}",
         "docker archive"),
    case("ingest-storage-in-proc",
         f"ingest docker-archive:{{garbage}} {IMAGES.replace('{s}/images-{case}', '/proc/nope')}",
         "/proc/nope"),
    case("ingest-notify-in-proc",
         f"ingest docker-archive:{{garbage}} {IMAGES} --notify /proc/nope", "--notify"),
    case("ingest-start-set-empty",
         f"ingest docker-archive:{{garbage}} {IMAGES} --start-set ''", "--start-set"),
    case("ingest-start-set-unbalanced",
         f"ingest docker-archive:{{garbage}} {IMAGES} --start-set python3~-c~'pass",
         "--start-set"),
    # bundle
    case("bundle-record-relative-path", "bundle record --repo-path sw --mount {empty} -- true",
         "--repo-path"),
    case("bundle-record-path-missing",
         "bundle record --repo-path /nope --mount {empty} -- true", "does not exist"),
    case("bundle-record-output-and-tree", "bundle record --repo-path / --mount {empty} "
         "--output {s}/spec --tree {empty} -- true", "not both"),
    case("bundle-record-command-fails",
         "bundle record --repo-path / --mount {empty} -- false", "exit status 1"),
    case("bundle-record-nothing-opened",
         "bundle record --repo-path / --mount {empty} -- true", "opened no file"),
    # run
    case("run-no-image-path", "run demo.pycvmfs.org -- true", "FQRN/IMAGE-PATH"),
    case("run-mount-is-proc", "run demo.pycvmfs.org/i --mount /proc -- true",
         "already a mount point"),
    case("run-cache-base-in-proc",
         "run demo.pycvmfs.org/i --config {conf} -o CVMFS_CACHE_BASE=/proc/nope -- true",
         "/proc/nope"),
    # wishlist
    case("wishlist-garbage", f"wishlist convert {{garbage}} {IMAGES}", "UTF-8"),
    case("wishlist-bad-yaml", f"wishlist convert {{bad_yaml}} {IMAGES}", "YAML"),
    case("wishlist-dev-null", f"wishlist convert /dev/null {IMAGES}", "empty wishlist"),
    case("wishlist-unreadable", f"wishlist convert {{unreadable_yaml}} {IMAGES}",
         "not readable", as_user=True),
    case("wishlist-loop-interval-nan", f"wishlist loop {{bad_yaml}} {IMAGES} --interval nan",
         "--interval"),
    case("wishlist-loop-rounds-zero", f"wishlist loop {{bad_yaml}} {IMAGES} --rounds 0",
         "--rounds"),
    # webhook
    case("webhook-port-in-use", WEBHOOK + " --listen 127.0.0.1:{busy_port}",
         "choose another --listen"),
    case("webhook-address-not-local", WEBHOOK + " --listen 192.0.2.1:8080", "192.0.2.1"),
    case("webhook-queue-in-proc", WEBHOOK + " --listen 127.0.0.1:0 --queue /proc/nope",
         "--queue"),
    case("webhook-queue-garbage", WEBHOOK + " --listen 127.0.0.1:0 --queue {garbage}",
         "--queue"),
    case("webhook-retry-inf", WEBHOOK + " --retry-seconds inf", "--retry-seconds"),
    case("webhook-token-missing", WEBHOOK.replace("--token t ", ""), "--token"),
    case("webhook-no-registry", WEBHOOK.replace("--registry-url 127.0.0.1:5000 ", ""),
         "--registry-url"),
    case("webhook-registry-bad", WEBHOOK.replace("127.0.0.1:5000", "ftp://x"),
         "--registry-url"),
    # images
    case("images-remove-storage-missing", "images remove x/y:1 --repo demo.pycvmfs.org "
         "--storage /proc/nope --keys-dir {keys}", "no repository storage at /proc/nope"),
    case("images-remove-empty-name", "images remove '' --repo demo.pycvmfs.org "
         "--storage {storage} --keys-dir {keys}", "names no image"),
    case("images-list-no-repository", "images list", "--storage"),
    case("images-list-not-a-repository", "images list --storage {empty} --keys {pub}",
         ".cvmfspublished"),
    case("images-list-mount-missing", "images list --mount {nope}", "--mount"),
    case("images-list-keys-garbage", "images list --storage {storage} --keys {garbage}",
         "garbage"),
    # gc
    case("gc-storage-missing", f"gc {STORAGE.replace('{storage}', '{nope}')} --keys-dir {{keys}}",
         "does not exist"),
    case("gc-not-a-storage", f"gc {STORAGE.replace('{storage}', '{empty}')} --keys-dir {{keys}}",
         "not a repository storage"),
    case("gc-keys-garbage", f"gc {STORAGE} --keys-dir {{garbkeys}}", "not a PEM"),
    case("gc-keep-negative", f"gc {STORAGE} --keys-dir {{keys}} --keep-revisions -1",
         "--keep-revisions"),
    # S3 storage (publish, whitelist sign, ingest, gc share the options)
    case("publish-s3-unreachable",
         PUBLISH.replace("{s}/published-{case}", "s3:///x") + " --s3-config {s3_unreachable}",
         "127.0.0.1:1"),
    case("publish-s3-no-credentials",
         PUBLISH.replace("{s}/published-{case}", "s3://bucket/x")
         + " --s3-endpoint http://127.0.0.1:1", "AWS_ACCESS_KEY_ID"),
    case("publish-s3-endpoint-not-a-url",
         PUBLISH.replace("{s}/published-{case}", "s3://bucket/x") + " --s3-endpoint ftp://x",
         "--s3-endpoint"),
    case("publish-s3-options-for-a-directory", PUBLISH + " --s3-endpoint http://127.0.0.1:1",
         "s3://"),
    case("whitelist-s3-config-no-secret",
         "whitelist sign --keys-dir {keys} --repo demo.pycvmfs.org --storage s3://bucket "
         "--s3-config {s3_no_secret}", "CVMFS_S3_SECRET_KEY"),
    case("whitelist-s3-no-bucket",
         "whitelist sign --keys-dir {keys} --repo demo.pycvmfs.org --storage s3://",
         "names no bucket"),
    case("ingest-s3-needs-work",
         f"ingest docker-archive:{{garbage}} {IMAGES.replace('{s}/images-{case}', 's3://b/x')}",
         "--work"),
    case("gc-s3-bad-bucket-name",
         f"gc {STORAGE.replace('{storage}', 's3://Not_A_Bucket')} --keys-dir {{keys}}",
         "bucket name"),
    case("gc-s3-config-missing",
         f"gc {STORAGE.replace('{storage}', 's3://bucket')} --keys-dir {{keys}} "
         "--s3-config {nope}", "{nope}"),
    # report
    case("dedup-keys-missing", f"report dedup {STORAGE} --keys-dir {{empty}}",
         "no public key"),
    case("dedup-pub-missing", f"report dedup {STORAGE} --keys {{nope}}/x.pub", "--keys"),
    case("dedup-no-keys", f"report dedup {STORAGE}", "--keys"),
    case("dedup-png-dir-missing",
         f"report dedup {STORAGE} --keys-dir {{keys}} --png {{nope}}/x.png", "--png"),
    case("dedup-storage-is-proc",
         f"report dedup {STORAGE.replace('{storage}', '/proc')} --keys-dir {{keys}}", "/proc"),
    case("dedup-png-unwritable",
         f"report dedup {STORAGE} --keys-dir {{keys}} --png /root/pycvmfs.png", "--png",
         as_user=True),
]


@dataclass
class Scratch:
    """The inputs the cases name, and how to run a case."""

    paths: dict[str, str]
    env: dict[str, str]
    user_env: dict[str, str] | None  # None: cases as `nobody` are skipped (why in .why)
    why: str

    def argv(self, case: Case) -> list[str]:
        return [arg.format(case=case.id, **self.paths) for arg in case.args]


@pytest.fixture(scope="module")
def scratch() -> Iterator[Scratch]:
    with shared_scratch("pycvmfs-badinput-") as base, \
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        yield _make_scratch(base, busy.getsockname()[1])


def _make_scratch(base: Path, busy_port: int) -> Scratch:
    (base / "empty").mkdir()
    (base / "garbage").write_bytes(bytes(range(256)) * 8)
    garbage_keys = base / "garbage-keys"
    garbage_keys.mkdir()
    for suffix in ("masterkey", "pub", "key", "crt"):
        (garbage_keys / f"{DEMO_FQRN}.{suffix}").write_bytes(b"-----BEGIN nonsense\n")
    (base / "bad.yaml").write_text("images: [unclosed\n")
    (base / "no-repo.yaml").write_text("version: 1\n")
    (base / "s3-unreachable.conf").write_text(  # no S3 server answers at 127.0.0.1:1
        "CVMFS_S3_HOST=127.0.0.1\nCVMFS_S3_PORT=1\nCVMFS_S3_BUCKET=bucket\n"
        "CVMFS_S3_ACCESS_KEY=a\nCVMFS_S3_SECRET_KEY=b\nCVMFS_S3_DNS_BUCKETS=false\n")
    (base / "s3-no-secret.conf").write_text("CVMFS_S3_HOST=127.0.0.1\nCVMFS_S3_ACCESS_KEY=a\n")
    storage = base / "storage"  # gc takes the storage's lock: never testdata/repo itself
    shutil.copytree(DEMO_REPO, storage)
    (base / "etc-cvmfs").mkdir()
    conf = base / "good.conf"  # complete, but no server answers at 127.0.0.1:1
    conf.write_text(f"CVMFS_SERVER_URL=http://127.0.0.1:1/cvmfs/@fqrn@\n"
                    f"CVMFS_PUBLIC_KEY={DEMO_KEY}\nCVMFS_HTTP_PROXY=DIRECT\n"
                    f"CVMFS_MAX_RETRIES=0\nCVMFS_TIMEOUT=2\nCVMFS_TIMEOUT_DIRECT=2\n"
                    f"CVMFS_CACHE_BASE={base / 'cache'}\n")
    for name, source in (("unreadable.pub", DEMO_KEY), ("unreadable.conf", conf),
                         ("unreadable.yaml", base / "no-repo.yaml")):
        shutil.copy(source, base / name)
        (base / name).chmod(0o600)
    for path in [base, *base.rglob("*")]:
        if not path.name.startswith("unreadable"):
            path.chmod(0o755 if path.is_dir() else 0o644)
    (base / "mnt").mkdir()
    home = base / "home"
    home.mkdir()
    paths = {"s": str(base), "empty": str(base / "empty"), "nope": str(base / "nope"),
             "garbage": str(base / "garbage"), "garbkeys": str(garbage_keys),
             "bad_yaml": str(base / "bad.yaml"), "no_repo_yaml": str(base / "no-repo.yaml"),
             "keys": str(DEMO_KEY.parent), "pub": str(DEMO_KEY), "repo": str(DEMO_REPO),
             "storage": str(storage), "conf": str(conf), "busy_port": str(busy_port),
             "s3_unreachable": str(base / "s3-unreachable.conf"),
             "s3_no_secret": str(base / "s3-no-secret.conf"),
             "unreadable_key": str(base / "unreadable.pub"),
             "unreadable_conf": str(base / "unreadable.conf"),
             "unreadable_yaml": str(base / "unreadable.yaml"), "user_mnt": str(base / "user-mnt")}
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PYCVMFS_", "AWS_"))}
    env.update(PYCVMFS_CONFIG_ROOT=str(base / "etc-cvmfs"), HOME=str(home), LC_ALL="C.UTF-8",
               AWS_EC2_METADATA_DISABLED="true")  # no S3 credentials, and none looked for
    # at the cloud metadata address
    why = _user_cases_impossible()
    user_env = None
    if why is None:
        import pwd

        entry = pwd.getpwnam(USER)
        user_home = base / "user-home"
        for directory in (user_home, base / "user-mnt"):
            directory.mkdir()
            os.chown(directory, entry.pw_uid, entry.pw_gid)
        user_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(user_home),
                    "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
                    "PYTHONPATH": os.pathsep.join(str(path) for path in python_path()),
                    "PYCVMFS_CONFIG_ROOT": str(base / "etc-cvmfs")}
    return Scratch(paths, env, user_env, why or "")


def _user_cases_impossible() -> str | None:
    if os.geteuid() != 0:
        return "the cases as another user need root to start them"
    return missing_requirement()


def _run(scratch: Scratch, case: Case) -> subprocess.CompletedProcess[str]:
    if case.as_user:
        assert scratch.user_env is not None
        import pwd

        entry = pwd.getpwnam(USER)
        prefix = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}",
                  "--clear-groups"]
        command, env = [*prefix, SYSTEM_PYTHON], scratch.user_env
    else:
        command, env = [sys.executable], scratch.env
    return subprocess.run([*command, "-m", "pycvmfs", *scratch.argv(case)], cwd=ROOT, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_S)


def _skip_reason(scratch: Scratch, case: Case) -> str | None:
    if case.as_user and scratch.user_env is None:
        return scratch.why
    if case.id == "mount-dev-fuse-closed" and os.path.exists(FUSE_DEVICE) \
            and stat.S_IMODE(os.stat(FUSE_DEVICE).st_mode) & 0o006 == 0o006:
        return f"{FUSE_DEVICE} is open to every user here right now"
    return None


@pytest.fixture(scope="module")
def outcomes(scratch: Scratch, request: pytest.FixtureRequest
             ) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every selected case, run WORKERS at a time (each ~0.3-1 s of interpreter start)."""
    selected = {item.callspec.id for item in request.session.items
                if isinstance(item, pytest.Function) and item.module is request.module
                and hasattr(item, "callspec")}
    todo = [case for case in CASES
            if case.id in selected and _skip_reason(scratch, case) is None]
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        results = pool.map(lambda case: (case.id, _run(scratch, case)), todo)
        return dict(results)


@pytest.mark.parametrize("bad", [pytest.param(item, id=item.id) for item in CASES])
def test_bad_input_gives_one_named_error(bad: Case, scratch: Scratch,
                                         outcomes: dict[str, subprocess.CompletedProcess[str]]
                                         ) -> None:
    reason = _skip_reason(scratch, bad)
    if reason is not None:
        pytest.skip(reason)
    done = outcomes[bad.id]
    output = done.stdout + done.stderr
    shown = f"pycvmfs {' '.join(scratch.argv(bad))}\nexit {done.returncode}\n{output}"
    assert "Traceback" not in output, shown
    assert "internal error" not in output, shown
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("pycvmfs: error: ")]
    usage = [line for line in lines if line.startswith("Error: ")]
    if done.returncode == 2:  # click's usage error: its own format
        assert len(usage) == 1 and not errors, shown
        line = usage[0]
    else:
        assert done.returncode == 1, shown
        assert len(errors) == 1 and not usage, shown
        line = errors[0]
    assert bad.names.format(**scratch.paths) in line, shown


def _leaf_commands(group: click.Group, ctx: click.Context, prefix: tuple[str, ...] = ()
                   ) -> set[tuple[str, ...]]:
    leaves: set[tuple[str, ...]] = set()
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        if isinstance(command, click.Group):
            leaves |= _leaf_commands(command, ctx, (*prefix, name))
        else:
            leaves.add((*prefix, name))
    return leaves


def test_every_command_is_covered() -> None:
    """Each command `pycvmfs --help` lists (subcommands of groups included) has cases."""
    with click.Context(cli) as ctx:
        commands = _leaf_commands(cli, ctx)
    assert {path[0] for path in commands} == set(COMMAND_MODULES)
    covered = {path for path in commands for item in CASES
               if item.args[:len(path)] == path}
    assert covered == commands, f"commands without bad-input cases: {commands - covered}"
