"""Two related, real container images for the image tests, built once and cached.

`base`   = Debian bookworm minbase (`debootstrap --variant=minbase`), one layer;
`python` = `base` plus python3: its first layer *is* `base`'s layer (same digest), its second
           layer is the diff `umoci repack` computes after `apt-get install python3` in an
           unpacked copy of `base` (new files, changed files, whiteouts for removed ones).
So the layer-level vs file-level dedup comparison of issue 4 is meaningful: layer-level dedup
stores the shared layer once but the diff layer re-stores every file apt touched (dpkg status,
ld.so.cache...) in full; file-level dedup stores only the files whose contents changed.

Both images live in one OCI layout (tags `base` and `python`; shared blobs are stored once),
and each is also kept unpacked (`umoci unpack`, as root: owners, modes, devices as in the
image) as a bundle whose `rootfs/` is what a flat image of it must look like.

Cache: `/var/cache/pycvmfs-test-images/<RECIPE>/` (override the root with
`PYCVMFS_TEST_IMAGES`), built under an fcntl lock (parallel sessions wait, then reuse) into a
temporary directory renamed into place when complete, so a crash never leaves a half-built
cache behind. Change `RECIPE` whenever the recipe changes: a new recipe gets a new directory.
The cache is world-readable (an ordinary user runs from a copy of it in the runner tests).

Cached entries are shared by every session: treat them as read-only. To modify a rootfs, copy
it first (`copy_tree`: a hard-link copy, so only write to it by replacing files, never in place).

Needs root, `debootstrap`, `umoci` and HTTP to deb.debian.org the first time; without them
`require_images()` skips the calling test with the reason. A build that fails although all of
that is present is a real error and fails the test.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

RECIPE = "bookworm-minbase-python3-v2"  # bump on any change below: a new cache directory
CACHE_ROOT = Path(os.environ.get("PYCVMFS_TEST_IMAGES", "/var/cache/pycvmfs-test-images"))
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
MIRROR_HOST = "deb.debian.org"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Generous: debootstrap takes ~40 s with a good mirror, but others run tests on the 2 cores.
BUILD_STEP_TIMEOUT_S = 1800
# How long a session waits for another session's build before giving up.
LOCK_WAIT_TIMEOUT_S = 2 * BUILD_STEP_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class ImageRecipe:
    """What goes into an image's config (umoci config flags are derived from it)."""

    tag: str
    env: tuple[str, ...]
    cmd: tuple[str, ...]
    working_dir: str
    entrypoint: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()


BASE = ImageRecipe(
    tag="base",
    env=(f"PATH={DEFAULT_PATH}", "LANG=C.UTF-8", "FOO=bar"),
    cmd=("/bin/sh",),
    working_dir="/srv",
    labels=(("org.opencontainers.image.title", "pycvmfs test image: Debian minbase"),),
)
PYTHON = ImageRecipe(
    tag="python",
    env=(f"PATH={DEFAULT_PATH}", "LANG=C.UTF-8", "FOO=bar",
         "GREETING=hello \"quoted\" $world"),
    cmd=("python3",),
    working_dir="/opt",
    labels=(("org.opencontainers.image.title", "pycvmfs test image: Debian minbase + python3"),),
)


@dataclass(frozen=True, slots=True)
class BuiltImage:
    """One cached image: its place in the OCI layout and its unpacked bundle."""

    recipe: ImageRecipe
    layout: Path           # OCI image layout directory (shared by both images)
    bundle: Path           # `umoci unpack` output: rootfs/, config.json, umoci.json
    manifest_digest: str   # "sha256:..."
    config_digest: str
    layer_digests: tuple[str, ...]
    config: dict[str, object]  # the OCI image config blob, parsed

    @property
    def tag(self) -> str:
        return self.recipe.tag

    @property
    def rootfs(self) -> Path:
        return self.bundle / "rootfs"

    @property
    def oci_ref(self) -> str:
        """The reference skopeo understands: `oci:LAYOUT:TAG`."""
        return f"oci:{self.layout}:{self.tag}"

    @property
    def umoci_ref(self) -> str:
        return f"{self.layout}:{self.tag}"


@dataclass(frozen=True, slots=True)
class ImageSet:
    base: BuiltImage
    python: BuiltImage
    build_seconds: float   # how long the (possibly earlier) build took
    directory: Path


# --- availability -----------------------------------------------------------------------------


def missing_requirement() -> str | None:
    """Why the images cannot be built here, or None. Network is checked only when needed."""
    if os.geteuid() != 0:
        return "building the test images needs root (debootstrap, umoci unpack with owners)"
    for tool, package in (("debootstrap", "debootstrap"), ("umoci", "umoci")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {package})"
    return None


def network_problem() -> str | None:
    try:
        with socket.create_connection((MIRROR_HOST, 80), timeout=10):
            return None
    except OSError as exc:
        return f"no network to {MIRROR_HOST}:80 for debootstrap ({exc})"


# --- public entry points ----------------------------------------------------------------------


def images_cached(cache_root: Path = CACHE_ROOT) -> bool:
    """True when the images are already built (a test using them is then fast)."""
    return (cache_root / RECIPE / "images.json").exists()


@functools.lru_cache(maxsize=1)
def _cached_images() -> ImageSet | str:
    reason = missing_requirement()
    if reason is not None and not (CACHE_ROOT / RECIPE / "images.json").exists():
        return reason
    return ensure_images()


def require_images() -> ImageSet:
    """The cached image set, built first if needed; skips the calling test if impossible."""
    result = _cached_images()
    if isinstance(result, str):
        pytest.skip(result)
    return result


@pytest.fixture(scope="session")
def built_images() -> ImageSet:
    """Import this fixture into a test module (`from tests.images import built_images`)."""
    return require_images()


def ensure_images(cache_root: Path = CACHE_ROOT) -> ImageSet | str:
    """Return the image set, building it if no complete cache exists; a str is a skip reason."""
    final = cache_root / RECIPE
    if (final / "images.json").exists():
        return load_images(final)
    cache_root.mkdir(parents=True, exist_ok=True)
    cache_root.chmod(0o755)
    with _locked(cache_root / f"{RECIPE}.lock"):
        if (final / "images.json").exists():          # built while we waited
            return load_images(final)
        reason = missing_requirement() or network_problem()
        if reason is not None:
            return reason
        for stale in cache_root.glob(f".{RECIPE}.tmp-*"):   # a crashed build's leftovers
            shutil.rmtree(stale, ignore_errors=True)
        work = cache_root / f".{RECIPE}.tmp-{os.getpid()}"
        work.mkdir(mode=0o755)
        try:
            _build(work)
            os.rename(work, final)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
    return load_images(final)


def load_images(directory: Path) -> ImageSet:
    info = json.loads((directory / "images.json").read_text())
    by_tag = {recipe.tag: recipe for recipe in (BASE, PYTHON)}

    def built(tag: str) -> BuiltImage:
        entry = info["images"][tag]
        return BuiltImage(
            recipe=by_tag[tag], layout=directory / "layout", bundle=directory / "bundles" / tag,
            manifest_digest=entry["manifest"], config_digest=entry["config"],
            layer_digests=tuple(entry["layers"]), config=entry["config_blob"])

    return ImageSet(base=built("base"), python=built("python"),
                    build_seconds=float(info["build_seconds"]), directory=directory)


def copy_tree(source: Path, dest: Path) -> None:
    """Copy a cached rootfs cheaply: hard links where possible (same filesystem), else a copy.

    The copy shares inodes with the cache: replace files (write elsewhere, rename over), never
    write into them or chmod them.
    """
    result = subprocess.run(["cp", "-a", "--link", str(source), str(dest)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(dest, ignore_errors=True)
        _run(["cp", "-a", str(source), str(dest)])


def unpack(image: BuiltImage, bundle: Path) -> Path:
    """`umoci unpack` the image into a new bundle; returns its rootfs."""
    _run(["umoci", "unpack", "--image", image.umoci_ref, str(bundle)])
    return bundle / "rootfs"


# --- the build --------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        deadline = time.monotonic() + LOCK_WAIT_TIMEOUT_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another session has held {path} for too long") from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(argv: Sequence[str], *, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(list(argv), capture_output=True, text=True, env=env,
                            timeout=BUILD_STEP_TIMEOUT_S)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}):\n"
                           f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return result.stdout


def _clean_env() -> dict[str, str]:
    return {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8", "HOME": "/root",
            "DEBIAN_FRONTEND": "noninteractive"}


def _config_flags(recipe: ImageRecipe) -> list[str]:
    flags = ["--clear=config.env", "--clear=config.cmd", "--clear=config.entrypoint",
             "--clear=config.labels"]
    flags += [f"--config.env={item}" for item in recipe.env]
    flags += [f"--config.cmd={item}" for item in recipe.cmd]
    flags += [f"--config.entrypoint={item}" for item in recipe.entrypoint]
    flags += [f"--config.label={key}={value}" for key, value in recipe.labels]
    flags.append(f"--config.workingdir={recipe.working_dir}")
    return flags


def _build(work: Path) -> None:
    started = time.monotonic()
    env = _clean_env()
    layout, scratch = work / "layout", work / "scratch"
    scratch.mkdir()

    # Image 1: one layer holding the whole debootstrap tree.
    base_root = scratch / "debootstrap"
    _run(["debootstrap", "--variant=minbase", SUITE, str(base_root), MIRROR], env=env)
    _run(["chroot", str(base_root), "apt-get", "clean"], env=env)
    _run(["umoci", "init", "--layout", str(layout)], env=env)
    base_ref = f"{layout}:{BASE.tag}"
    _run(["umoci", "new", "--image", base_ref], env=env)
    _run(["umoci", "insert", "--image", base_ref, str(base_root), "/"], env=env)
    _run(["umoci", "config", "--image", base_ref, *_config_flags(BASE)], env=env)
    shutil.rmtree(base_root)

    # Image 2: base's layer plus the diff of installing python3 in an unpacked copy of base.
    python_ref = f"{layout}:{PYTHON.tag}"
    staging = scratch / "python-staging"
    _run(["umoci", "unpack", "--image", base_ref, str(staging)], env=env)
    _install_python(staging / "rootfs", env)
    _run(["umoci", "repack", "--image", python_ref, str(staging)], env=env)
    _run(["umoci", "config", "--image", python_ref, *_config_flags(PYTHON)], env=env)
    _run(["umoci", "gc", "--layout", str(layout)], env=env)
    shutil.rmtree(scratch)

    # The reference flat trees: exactly what `umoci unpack` makes of the final images.
    images: dict[str, object] = {}
    for recipe in (BASE, PYTHON):
        bundle = work / "bundles" / recipe.tag
        bundle.parent.mkdir(exist_ok=True)
        _run(["umoci", "unpack", "--image", f"{layout}:{recipe.tag}", str(bundle)], env=env)
        bundle.chmod(0o755)
        images[recipe.tag] = _describe(layout, recipe.tag)
    (work / "bundles").chmod(0o755)
    _make_readable(layout)
    info = {"recipe": RECIPE, "build_seconds": round(time.monotonic() - started, 1),
            "images": images}
    (work / "images.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")


def _install_python(rootfs: Path, env: dict[str, str]) -> None:
    """apt-get install python3 inside the unpacked tree (chroot; DNS from the host).

    The image's /etc/resolv.conf is moved aside and moved back (same inode, mode and mtime),
    so the diff layer holds only what apt changed.
    """
    resolv = rootfs / "etc" / "resolv.conf"
    aside = rootfs / "etc" / ".resolv.conf.pycvmfs-build"
    had_resolv = os.path.lexists(resolv)
    if had_resolv:
        os.rename(resolv, aside)
    shutil.copyfile("/etc/resolv.conf", resolv)
    try:
        script = ("apt-get update -qq && "
                  "apt-get install -y -qq --no-install-recommends python3 && "
                  "apt-get clean && rm -rf /var/lib/apt/lists/*")
        _run(["chroot", str(rootfs), "/bin/sh", "-c", script], env=env)
    finally:
        resolv.unlink()
        if had_resolv:
            os.rename(aside, resolv)


def _blob(layout: Path, digest: str) -> dict[str, object]:
    algorithm, hexdigest = digest.split(":", 1)
    parsed: dict[str, object] = json.loads((layout / "blobs" / algorithm / hexdigest).read_text())
    return parsed


def _describe(layout: Path, tag: str) -> dict[str, object]:
    index = json.loads((layout / "index.json").read_text())
    entry = next(m for m in index["manifests"]
                 if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
    manifest = _blob(layout, entry["digest"])
    config_desc = manifest["config"]
    layers = manifest["layers"]
    assert isinstance(config_desc, dict) and isinstance(layers, list)
    return {"manifest": entry["digest"], "config": config_desc["digest"],
            "layers": [layer["digest"] for layer in layers],
            "config_blob": _blob(layout, config_desc["digest"])}


def _make_readable(tree: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(tree):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)
