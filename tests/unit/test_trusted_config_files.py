"""Configuration files are input too (issue 9, class 13): who may own and write a
configuration, key or blacklist file and its directories, what kind of file is read and how
much of it, how fast hostile text parses, and that every skipped line is reported.

Ownership cases chown files to `nobody` (65534), so they need root; they are skipped
otherwise. Nothing here runs a subprocess."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pycvmfs.config import Settings, load_config, parse_config_text
from pycvmfs.config_files import (
    MAX_CONFIG_BYTES,
    MAX_KEY_BYTES,
    FileTrust,
    read_trusted_bytes,
)
from pycvmfs.config_shell import MAX_REPORTED
from pycvmfs.errors import ConfigError
from pycvmfs.repository.trust import load_blacklist, load_public_keys

NOBODY = 65534
NOGROUP = 65534  # its primary member is nobody: a group with other members than root
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
FQRN = "atlas.example.org"
DEMO_KEY = Path(__file__).resolve().parents[2] / "testdata" / "keys" / "demo.pycvmfs.org.pub"


def read(path: Path, trust: FileTrust | None = None, max_bytes: int = MAX_CONFIG_BYTES
         ) -> bytes | None:
    return read_trusted_bytes(path, what="configuration file", trust=trust,
                              max_bytes=max_bytes)


def refused(path: Path, *needles: str, trust: FileTrust | None = None,
            max_bytes: int = MAX_CONFIG_BYTES) -> str:
    """The one-line ConfigError reading `path` gives; it names the file and `needles`."""
    with pytest.raises(ConfigError) as info:
        read(path, trust, max_bytes)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for needle in needles:
        assert needle in message, message
    return message


def within(seconds: float, call: Callable[[], object]) -> object:
    """`call()` in a daemon thread; fails (instead of hanging the suite) if it blocks."""
    box: list[object] = []

    def run() -> None:
        try:
            box.append(call())
        except BaseException as exc:  # handed to the test
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s"
    return box[0]


@pytest.fixture
def base(tmp_path: Path) -> Path:
    directory = tmp_path / "etc"
    directory.mkdir()
    return directory


# --- owner and mode of the file -------------------------------------------------------------


def test_an_ordinary_file_is_read(base: Path) -> None:
    (base / "f").write_text("A=1\n")
    assert read(base / "f") == b"A=1\n"
    assert read(base / "missing") is None


@ROOT_ONLY
@pytest.mark.parametrize(("owner", "group", "mode", "needles"), [
    (0, 0, 0o666, ["writable by every user (mode 0666)", "chmod go-w"]),
    (0, 0, 0o602, ["writable by every user", "chmod go-w"]),
    (0, NOGROUP, 0o664, ["writable by group", "which has other members", "chmod go-w"]),
    (NOBODY, 0, 0o644, ["owned by nobody (uid 65534), not by root", "chown root"]),
    (NOBODY, 0, 0o666, ["owned by nobody", "writable by every user", "chown root",
                        "chmod go-w"]),
])
def test_a_file_others_can_write_or_own_is_refused(base: Path, owner: int, group: int,
                                                   mode: int, needles: list[str]) -> None:
    path = base / "domain.conf"
    path.write_text("CVMFS_SERVER_URL=http://attacker/cvmfs/@fqrn@\n")
    os.chown(path, owner, group)
    path.chmod(mode)
    refused(path, "configuration file", "is not trusted", *needles)


@ROOT_ONLY
def test_group_writable_is_fine_for_a_private_group(base: Path) -> None:
    path = base / "f"
    path.write_text("A=1")
    path.chmod(0o664)  # root:root, and root is the only member of group root here
    assert read(path) == b"A=1"


@ROOT_ONLY
def test_an_ordinary_user_trusts_root_and_themselves_only(base: Path) -> None:
    user = FileTrust(uid=NOBODY)
    mine, roots, theirs = base / "mine", base / "roots", base / "theirs"
    for path in (mine, roots, theirs):
        path.write_text("A=1")
    os.chown(mine, NOBODY, NOGROUP)
    os.chown(theirs, 1234, 1234)
    assert read(mine, user) == b"A=1" and read(roots, user) == b"A=1"
    refused(theirs, "owned by uid 1234, not by root or nobody", "chown nobody", trust=user)
    refused(mine, "owned by nobody")  # and root trusts root only


# --- directories ----------------------------------------------------------------------------


@ROOT_ONLY
@pytest.mark.parametrize(("owner", "mode", "needle"), [
    (0, 0o777, "writable by every user (mode 0777)"),
    (0, 0o775, "writable by group"),
    (NOBODY, 0o755, "owned by nobody"),
])
def test_a_directory_others_can_write_or_own_is_refused(base: Path, owner: int, mode: int,
                                                        needle: str) -> None:
    directory = base / "domain.d"
    directory.mkdir()
    (directory / "example.org.conf").write_text("A=1")
    os.chown(directory, owner, NOGROUP if mode == 0o775 else 0)
    directory.chmod(mode)
    message = refused(directory / "example.org.conf", f"its directory {directory}", needle)
    assert "plant files" in message


@ROOT_ONLY
def test_every_directory_up_to_the_root_is_checked(base: Path) -> None:
    deep = base / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "f").write_text("A=1")
    (base / "a").chmod(0o777)
    refused(deep / "f", f"its directory {base / 'a'} is writable by every user")


def test_a_sticky_directory_is_fine_for_a_trusted_entry(base: Path) -> None:
    scratch = base / "scratch"
    scratch.mkdir()
    scratch.chmod(0o1777)  # like /tmp: nobody can replace someone else's entry
    (scratch / "f").write_text("A=1")
    assert read(scratch / "f") == b"A=1"


@ROOT_ONLY
def test_a_stranger_s_entry_in_a_sticky_directory_is_refused(base: Path) -> None:
    scratch = base / "scratch"
    (scratch / "planted").mkdir(parents=True)
    scratch.chmod(0o1777)
    (scratch / "planted" / "f").write_text("A=1")
    os.chown(scratch / "planted", NOBODY, NOGROUP)
    refused(scratch / "planted" / "f", f"its directory {scratch / 'planted'}", "owned by nobody")


# --- symlinks -------------------------------------------------------------------------------


def test_symlinks_are_followed_to_a_trusted_file(base: Path) -> None:
    (base / "real").write_text("A=1")
    (base / "sub").mkdir()
    (base / "sub" / "link").symlink_to("../real")
    (base / "abs").symlink_to(base / "sub" / "link")
    assert read(base / "abs") == b"A=1"


@ROOT_ONLY
def test_a_symlink_to_a_bad_target_is_refused(base: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.write_text("A=1")
    os.chown(foreign, NOBODY, NOGROUP)
    (base / "to-foreign").symlink_to(foreign)
    refused(base / "to-foreign", f"(-> {foreign})", "owned by nobody")
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o777)
    open_dir.chmod(0o777)
    (open_dir / "f").write_text("A=1")
    (base / "via-open-dir").symlink_to(open_dir / "f")
    refused(base / "via-open-dir", f"its directory {open_dir}")
    (open_dir / "link").symlink_to(base / "to-foreign")  # the link itself is in the open dir
    (base / "chain").symlink_to(open_dir / "link")
    refused(base / "chain", f"its directory {open_dir}")


def test_symlink_loops_and_dangling_links(base: Path) -> None:
    (base / "a").symlink_to("b")
    (base / "b").symlink_to("a")
    refused(base / "a", "symbolic links")
    (base / "dangling").symlink_to(base / "nowhere")
    assert read(base / "dangling") is None


# --- kind and size --------------------------------------------------------------------------


def test_a_fifo_is_refused_without_blocking(base: Path) -> None:
    os.mkfifo(base / "fifo")  # nobody ever opens the writing end
    (base / "link").symlink_to(base / "fifo")
    for path in (base / "fifo", base / "link"):
        start = time.monotonic()
        outcome = within(5.0, lambda p=path: read(p))  # type: ignore[misc]
        assert time.monotonic() - start < 1.0
        assert isinstance(outcome, ConfigError)
        assert "is a FIFO, not a regular file" in str(outcome)


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null", "/dev/urandom"])
def test_devices_are_refused(base: Path, device: str) -> None:
    refused(Path(device), "is a character device, not a regular file")
    (base / "default.local").symlink_to(device)
    outcome = within(5.0, lambda: read(base / "default.local"))
    assert isinstance(outcome, ConfigError) and f"(-> {device})" in str(outcome)


def test_directories_and_sockets_are_refused(base: Path) -> None:
    refused(base, "is a directory, not a regular file")


def test_size_cap(base: Path) -> None:
    exact, over = base / "exact", base / "over"
    exact.write_bytes(b"#" * MAX_CONFIG_BYTES)
    over.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    assert read(exact) == b"#" * MAX_CONFIG_BYTES
    refused(over, f"({MAX_CONFIG_BYTES + 1} bytes) is larger than the limit of "
                  f"{MAX_CONFIG_BYTES} bytes")
    key = base / "big.pub"
    key.write_bytes(b"k" * (MAX_KEY_BYTES + 1))
    with pytest.raises(ConfigError, match=r"public key .*big\.pub .* is larger than"):
        load_public_keys([key])


# --- the hierarchy, keys and the blacklist use the same reader ------------------------------


def make_etc(root: Path, files: dict[str, str]) -> Path:
    for name, text in {"keys/example.org.pub": "k", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def load(root: Path, **overrides: str) -> object:
    return load_config(FQRN, config_root=root, environ={"HOME": "/home/u"}, is_root=True,
                       overrides={"CVMFS_SERVER_URL": "http://s1/cvmfs/@fqrn@", **overrides})


@ROOT_ONLY
def test_a_planted_domain_file_does_not_redirect_a_root_mount(tmp_path: Path) -> None:
    """The issue's case: world-writable, owned by another user, naming a server and key."""
    root = make_etc(tmp_path / "etc", {"domain.d/example.org.conf":
                                       "CVMFS_SERVER_URL=http://evil/cvmfs/@fqrn@\n"
                                       "CVMFS_PUBLIC_KEY=/tmp/evil.pub\n"})
    planted = root / "domain.d/example.org.conf"
    os.chown(planted, NOBODY, NOGROUP)
    planted.chmod(0o666)
    with pytest.raises(ConfigError) as info:
        load_config(FQRN, config_root=root, environ={}, is_root=True)
    message = str(info.value)
    assert "\n" not in message
    for needle in (str(planted), "owned by nobody", "mode 0666", f"chown root {planted}",
                   f"chmod go-w {planted}"):
        assert needle in message


@pytest.mark.parametrize("name", ["default.conf", "default.d/50-site.conf", "default.local",
                                  "config.d/atlas.example.org.local"])
def test_every_layer_is_read_safely(tmp_path: Path, name: str) -> None:
    root = make_etc(tmp_path / "etc", {})
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(root / name)
    outcome = within(5.0, lambda: load(root))
    assert isinstance(outcome, ConfigError) and "is a FIFO" in str(outcome)


def test_extra_files_are_read_safely(tmp_path: Path) -> None:
    root = make_etc(tmp_path / "etc", {})
    outcome = within(5.0, lambda: load_config(FQRN, config_root=root, environ={},
                                              extra_files=[Path("/dev/zero")]))
    assert isinstance(outcome, ConfigError) and "/dev/zero is a character device" in str(outcome)


def test_a_huge_file_is_refused_quickly(tmp_path: Path) -> None:
    root = make_etc(tmp_path / "etc", {})
    (root / "default.local").write_text('CVMFS_X="never closed\n' + "x\n" * 4_500_000)
    start = time.monotonic()
    with pytest.raises(ConfigError, match="default.local .* is larger than the limit"):
        load(root)
    assert time.monotonic() - start < 1.0


@ROOT_ONLY
def test_key_files_are_checked(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    key = keys / "demo.pycvmfs.org.pub"
    key.write_bytes(DEMO_KEY.read_bytes())
    assert len(load_public_keys([keys])) == 1
    key.chmod(0o666)
    with pytest.raises(ConfigError, match=r"public key .*demo\.pycvmfs\.org\.pub is not "
                                          r"trusted: it is writable by every user"):
        load_public_keys([keys])
    root = make_etc(tmp_path / "etc", {})
    with pytest.raises(ConfigError, match="public key .* is not trusted"):
        load(root, CVMFS_PUBLIC_KEY=str(key))
    with pytest.raises(ConfigError, match="public key .* is not trusted"):
        load(root, CVMFS_KEYS_DIR=str(keys))
    key.chmod(0o644)
    keys.chmod(0o777)
    with pytest.raises(ConfigError, match=f"its directory {keys} is writable"):
        load(root, CVMFS_KEYS_DIR=str(keys))
    os.mkfifo(tmp_path / "fifo.pub")
    outcome = within(5.0, lambda: load_public_keys([tmp_path / "fifo.pub"]))
    assert isinstance(outcome, ConfigError) and "is a FIFO" in str(outcome)


@ROOT_ONLY
def test_blacklist_files_are_checked(tmp_path: Path) -> None:
    blacklist = tmp_path / "blacklist"
    assert load_blacklist([blacklist]) is not None  # none: nothing revoked
    blacklist.write_text("# nothing\n")
    assert load_blacklist([blacklist]) is not None
    os.chown(blacklist, NOBODY, NOGROUP)
    with pytest.raises(ConfigError, match="blacklist .* owned by nobody"):
        load_blacklist([blacklist])
    blacklist.unlink()
    os.mkfifo(blacklist)
    outcome = within(5.0, lambda: load_blacklist([blacklist]))
    assert isinstance(outcome, ConfigError) and "is a FIFO" in str(outcome)


# --- parsing cost and the report of skipped lines -------------------------------------------

NINE_MB = 9 * 1024 * 1024


@pytest.mark.parametrize(("name", "text"), [
    ("unclosed double quote, short lines", 'A="x\n' + "y\n" * (NINE_MB // 2)),
    ("unclosed single quote, short lines", "A='x\n" + "y\n" * (NINE_MB // 2)),
    ("unclosed double quote, one line", 'A="' + "y" * NINE_MB),
    ("unclosed single quote, long lines", "A='x\n" + ("y" * 1000 + "\n") * (NINE_MB // 1001)),
])
def test_an_unclosed_quote_in_9_mb_parses_in_well_under_a_second(name: str, text: str) -> None:
    warnings = parse_config_text(text, source="f", settings=Settings())
    assert len(warnings) == 1 and warnings[0].startswith("f:1: unterminated")
    assert _best_time(text) < 1.0, name  # typically 0.1 s; the best of five on a busy host


def _best_time(text: str) -> float:
    """CPU seconds of this thread: another process on the cores does not count."""
    best = float("inf")
    for _ in range(5):
        start = time.thread_time()
        parse_config_text(text, source="f", settings=Settings())
        best = min(best, time.thread_time() - start)
    return best


@pytest.mark.parametrize(("name", "unit", "tail"), [
    ("bad lines", "y\n", ""),
    ("unclosed ${ with a } far away", "A=${X\n", "}"),
    ("multi-line single quotes", "A='x\n", ""),
    ("continued lines", "B=\\\n", "C=x\\"),
    ("escapes in double quotes", '\\$', ""),
    ("long lines", "A=" + "x" * 50 + " B=${Y:-z} C=~/d:~\n", ""),
])
def test_parsing_time_is_linear(name: str, unit: str, tail: str) -> None:
    """Four times the text takes about four times as long (a quadratic path: sixteen)."""
    prefix = 'A="' if name.startswith("escapes") else ""
    small, large = (prefix + unit * count + tail for count in (2000, 8000))
    ratio = _best_time(large) / _best_time(small)
    assert ratio < 8, f"{name}: 4x the text took {ratio:.1f}x the time"


def test_an_unclosed_quote_reports_the_lines_it_skips() -> None:
    text = "A=1\nB='open\nC=2\nD=3\n"
    state = Settings()
    assert parse_config_text(text, source="f", settings=state) == [
        "f:2: unterminated single quote; lines 2-4 (to the end of the file) ignored"]
    state = Settings()
    assert parse_config_text(text.rstrip(), source="f", settings=state) == [
        "f:2: unterminated single quote; lines 2-4 (to the end of the file) ignored"]
    assert state.values == {"A": "1"}


def test_every_skipped_line_is_reported_with_its_line() -> None:
    lines = ["A=1", "$(reboot)", "B='two", "lines' $(x)", "", "if true; then", "C=3",
             "fi", "D=`id`", "E=${X", "F=${X#y}", "readonly G=1", "G=2", "H=\x00",
             "# comment", "I=ok # comment"]
    state = Settings()
    warnings = parse_config_text("\n".join(lines), source="f", settings=state)
    reported = [w.split(": ", 1)[0] for w in warnings]
    assert reported == ["f:2", "f:3", "f:6", "f:8", "f:9", "f:10", "f:11", "f:13", "f:14"]
    assert "lines 3-4 ignored" in warnings[1]
    assert state.values == {"A": "1", "C": "3", "G": "1", "I": "ok"}


def test_a_flood_of_bad_lines_is_summed_up() -> None:
    bad = 5 * MAX_REPORTED
    text = "".join(f"junk {i}\n" for i in range(bad)) + "A=1\n"
    state = Settings()
    warnings = parse_config_text(text, source="f", settings=state)
    assert len(warnings) == MAX_REPORTED + 1
    assert [w.split(":")[1] for w in warnings[:3]] == ["1", "2", "3"]
    assert re.fullmatch(rf"f:{MAX_REPORTED + 1}: {bad - MAX_REPORTED} more problems on lines "
                        rf"{MAX_REPORTED + 1}-{bad}, .*", warnings[-1])
    assert state.values == {"A": "1"}  # what follows still applies
