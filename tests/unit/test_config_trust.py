"""Issue 12, configuration you can trust: unknown keys warn with "did you mean", garbage
`--config` files are refused with file:line, unreadable files of the hierarchy are said
(never skipped silently, never fatal), every bad value is found, and `inspect_config`
reports all of it without raising (what `config show` and `doctor` use)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pycvmfs.cli.config import shell_word
from pycvmfs.config import (
    ClientConfig,
    Severity,
    inspect_config,
    load_config,
)
from pycvmfs.config_keys import (
    KNOWN_KEYS,
    REFERENCE_ONLY_KEYS,
    USED_KEYS,
    close_matches,
    is_ignored,
    is_known,
    shown_origin,
    unknown_key_warning,
)
from pycvmfs.config_values import without_auto
from pycvmfs.errors import ConfigError

FQRN = "atlas.example.org"
URL = "http://s1/cvmfs/@fqrn@"


def make_root(tmp_path: Path, files: dict[str, str] | None = None) -> Path:
    root = tmp_path / "etc"
    for name, text in {"keys/example.org.pub": "k", **(files or {})}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def load(root: Path, *, extra_files: tuple[Path, ...] = (),
         overrides: dict[str, str] | None = None) -> ClientConfig:
    return load_config(FQRN, config_root=root, extra_files=extra_files,
                       overrides=overrides or {}, environ={"HOME": "/home/u"}, is_root=False)


def conf(root: Path) -> Path:
    return root / "config.d" / f"{FQRN}.conf"


# --- key names ------------------------------------------------------------------------------


def test_the_tables_do_not_overlap_and_name_what_the_client_reads() -> None:
    assert not USED_KEYS & REFERENCE_ONLY_KEYS
    assert {"CVMFS_SERVER_URL", "CVMFS_HTTP_PROXY", "CVMFS_PUBLIC_KEY"} <= USED_KEYS
    assert all(key.startswith(("CVMFS_", "PYCVMFS_")) for key in KNOWN_KEYS)


@pytest.mark.parametrize(("key", "expected"), [
    ("CVMFS_SERVR_URL", "CVMFS_SERVER_URL"),
    ("CVMFS_HTTP_PROXI", "CVMFS_HTTP_PROXY"),
    ("CVMFS_QUOTA_LIMT", "CVMFS_QUOTA_LIMIT"),
    ("CVMFS_PUBLICKEY", "CVMFS_PUBLIC_KEY"),
])
def test_did_you_mean(key: str, expected: str) -> None:
    assert close_matches(key)[0] == expected
    assert unknown_key_warning(key, "f.conf:3") == (
        f"f.conf:3: unknown parameter {key} (did you mean {expected}?)")


def test_unknown_without_a_close_name_and_names_not_checked() -> None:
    assert unknown_key_warning("CVMFS_ZZZ", "-o") == "-o: unknown parameter CVMFS_ZZZ"
    assert unknown_key_warning("SITE", "f:1") is None  # a file's helper variable
    assert unknown_key_warning("CVMFS_CACHE_BASE", "f:1") is None


def test_reference_keys_are_ignored_not_unknown() -> None:
    for key in ("CVMFS_MEMCACHE_SIZE", "CVMFS_CACHE_myplugin_TYPE", "CVMFS_CACHE_tier_UPPER"):
        assert is_known(key) and is_ignored(key)
    assert not is_ignored("CVMFS_SERVER_URL") and not is_ignored("SITE")


def test_unknown_keys_warn_once_per_assignment_with_file_and_line(tmp_path: Path) -> None:
    root = make_root(tmp_path, {"default.local": "SITE=x\nCVMFS_SERVR_URL=http://a\n",
                                f"config.d/{FQRN}.conf": f"CVMFS_SERVER_URL={URL}\n"
                                                         "CVMFS_MEMCACHE_SIZE=64\n"})
    config = load(root, overrides={"CVMFS_TIMEOUTT": "3"})
    assert config.warnings == (
        f"{root / 'default.local'}:2: unknown parameter CVMFS_SERVR_URL (did you mean "
        "CVMFS_SERVER_URL?)",
        "-o: unknown parameter CVMFS_TIMEOUTT (did you mean CVMFS_TIMEOUT?)")
    assert config.notes == (f"{conf(root)}:2: CVMFS_MEMCACHE_SIZE is a CernVM-FS parameter "
                            "pycvmfs does not use; ignored",)


def test_a_misspelled_key_is_named_when_the_real_one_is_missing(tmp_path: Path) -> None:
    root = make_root(tmp_path, {f"config.d/{FQRN}.conf": f"CVMFS_SERVR_URL={URL}\n"})
    with pytest.raises(ConfigError) as info:
        load(root)
    assert str(info.value).startswith(
        f"no CVMFS_SERVER_URL for {FQRN} (CVMFS_SERVR_URL is set in {conf(root)}:1: did you "
        "mean CVMFS_SERVER_URL?): ")


def test_a_misspelled_public_key_is_named(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / "keys" / "example.org.pub").unlink()
    with pytest.raises(ConfigError) as info:
        load(root, overrides={"CVMFS_SERVER_URL": URL, "CVMFS_PUBLC_KEY": "/k.pub"})
    assert str(info.value).startswith("CVMFS_PUBLC_KEY is set in -o option: did you mean "
                                      f"CVMFS_PUBLIC_KEY?; no public key for {FQRN}")


# --- files ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "line", "why"), [
    ("CVMFS_TIMEOUT=5\n{\"json\": true}\n", 2, "not a KEY=VALUE assignment"),
    ("server: http://x\n", 1, "not a KEY=VALUE assignment"),
    ("CVMFS_TIMEOUT=5\nCVMFS_SERVER_URL='http://x\nmore\n", 2, "unterminated single quote"),
    ("A=1\nB=$(hostname)\n", 2, "command substitution"),
])
def test_garbage_config_files_are_refused_with_file_and_line(tmp_path: Path, text: str,
                                                             line: int, why: str) -> None:
    root = make_root(tmp_path)
    garbage = tmp_path / "garbage.conf"
    garbage.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(root, extra_files=(garbage,), overrides={"CVMFS_SERVER_URL": URL})
    message = str(info.value)
    assert message.startswith(f"{garbage}:{line}: {why}"), message
    assert "; a --config file must hold only KEY=VALUE lines (" in message
    assert "\n" not in message


def test_a_binary_config_file_is_refused_and_a_binary_hierarchy_file_warns(
        tmp_path: Path) -> None:
    root = make_root(tmp_path)
    blob = tmp_path / "blob.conf"
    blob.write_bytes(b"CVMFS_TIMEOUT=5\n\x7fELF\x02\x01\x01\x00\x00")
    with pytest.raises(ConfigError, match=f"configuration file {blob}:2: binary data "
                       r"\(a control character\), not KEY=VALUE lines"):
        load(root, extra_files=(blob,), overrides={"CVMFS_SERVER_URL": URL})
    (root / "default.local").write_bytes(b"\x00\x01\x02")
    config = load(root, overrides={"CVMFS_SERVER_URL": URL})
    assert config.warnings == (f"{root / 'default.local'}:1: cannot be read (binary data (a "
                               "control character), not KEY=VALUE lines); ignored",)


def test_a_dangling_symlink_is_said(tmp_path: Path) -> None:
    root = make_root(tmp_path, {f"config.d/{FQRN}.conf": f"CVMFS_SERVER_URL={URL}\n"})
    (root / "default.local").symlink_to(tmp_path / "gone.conf")
    assert load(root).warnings == (f"{root / 'default.local'}: cannot be read (a dangling "
                                   f"symbolic link to {tmp_path / 'gone.conf'}); ignored",)
    with pytest.raises(ConfigError, match="dangling symbolic link"):
        load(root, extra_files=(root / "default.local",))


def test_a_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing.conf: no such file"):
        load(make_root(tmp_path), extra_files=(tmp_path / "missing.conf",))


def _deny(monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    real_stat = os.stat

    def no_permission(path: os.PathLike[str] | str, *args: object, **kwargs: object
                      ) -> os.stat_result:
        if str(path).endswith(suffix):
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", no_permission)


def test_an_unreadable_repository_file_is_not_where_the_error_sends_the_user(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_root(tmp_path, {f"config.d/{FQRN}.conf": f"CVMFS_SERVER_URL={URL}\n"})
    _deny(monkeypatch, f"{FQRN}.conf")
    report = inspect_config(FQRN, config_root=root, environ={"HOME": "/home/u"},
                            is_root=False)
    assert report.of(Severity.WARNING) == (
        f"{conf(root)}: cannot be read (Permission denied); ignored",)
    (error,) = report.of(Severity.ERROR)
    assert f"set it in config.d/{FQRN}.local, ({conf(root)} could not be read) a --config " \
           "file or -o CVMFS_SERVER_URL=" in error
    assert f"set it in config.d/{FQRN}.conf" not in error


# --- values ---------------------------------------------------------------------------------


def test_inspect_collects_every_problem_without_raising(tmp_path: Path) -> None:
    root = make_root(tmp_path, {f"config.d/{FQRN}.conf":
                                f"CVMFS_SERVER_URL={URL}\nCVMFS_TIMEOUT=-5\nCVMFS_NFILES=abc\n"
                                "CVMFS_USE_GEOAPI=maybe\nCVMFS_HTTP_PROXY='a;;b|'\n"
                                "CVMFS_QUOTA_LIMIT=0\nCVMFS_SERVR_URL=x\n"})
    report = inspect_config(FQRN, config_root=root, environ={"HOME": "/home/u"},
                            is_root=False)
    assert report.config is None
    errors = report.of(Severity.ERROR)
    assert [e.partition("=")[0] for e in errors] == [
        "CVMFS_TIMEOUT", "CVMFS_NFILES", "CVMFS_QUOTA_LIMIT", "CVMFS_USE_GEOAPI"]
    assert f"(set in {conf(root)}:3): not an integer (allowed: 64 to 1073741824 open files)" \
        in errors[1]
    assert "must be -1 or at least 1 MB (allowed: -1 or 1 to" in errors[2]
    assert len(report.of(Severity.WARNING)) == 1
    assert report.values["CVMFS_TIMEOUT"] == "-5"
    assert report.origins["CVMFS_TIMEOUT"] == f"{conf(root)}:2"


def test_inspect_of_a_good_configuration_has_the_config(tmp_path: Path) -> None:
    root = make_root(tmp_path, {f"config.d/{FQRN}.conf": f"CVMFS_SERVER_URL={URL}\n"})
    report = inspect_config(FQRN, config_root=root, environ={"HOME": "/home/u"},
                            is_root=False)
    assert report.config is not None and report.problems == ()
    assert report.config.server_urls == (f"http://s1/cvmfs/{FQRN}",)


def test_inspect_of_a_bad_name_is_an_error_not_an_exception() -> None:
    report = inspect_config("../etc", environ={})
    assert report.config is None and "is not a repository name" in report.problems[0].message


@pytest.mark.parametrize(("written", "kept", "dropped"), [
    ("auto;DIRECT", "DIRECT", True),
    ("http://a:3128|auto;DIRECT", "http://a:3128;DIRECT", True),
    ("http://a:3128;DIRECT", "http://a:3128;DIRECT", False),
    ("auto", "", True),
])
def test_auto_proxies(written: str, kept: str, dropped: bool) -> None:
    assert without_auto(written) == (kept, dropped)


def test_auto_is_dropped_with_a_warning_and_alone_refused(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    config = load(root, overrides={"CVMFS_SERVER_URL": URL, "CVMFS_HTTP_PROXY": "auto;DIRECT"})
    assert config.http_proxy == "DIRECT"
    assert config.warnings == ("CVMFS_HTTP_PROXY (set in <-o>): auto (proxies discovered from "
                               "the PAC files of CVMFS_PAC_URLS) is not supported by pycvmfs; "
                               "using DIRECT",)
    with pytest.raises(ConfigError, match="CVMFS_HTTP_PROXY='auto'.*not supported by pycvmfs "
                       "and nothing else is in it"):
        load(root, overrides={"CVMFS_SERVER_URL": URL, "CVMFS_HTTP_PROXY": "auto"})


# --- how `config show` prints ---------------------------------------------------------------


@pytest.mark.parametrize(("origin", "shown"), [
    ("<built-in default.conf>", "default"),
    ("<-o>", "-o option"),
    ("<built-in domain.d/cern.ch.conf>", "default (domain.d/cern.ch.conf)"),
    ("/etc/cvmfs/default.local:3", "/etc/cvmfs/default.local:3"),
])
def test_shown_origin(origin: str, shown: str) -> None:
    assert shown_origin(origin) == shown


@pytest.mark.parametrize(("value", "word"), [
    ("http://s1/cvmfs/a.b", "http://s1/cvmfs/a.b"),
    ("a;b", "'a;b'"),
    ("it's", "'it'\\''s'"),
    ("", ""),
])
def test_shell_word(value: str, word: str) -> None:
    assert shell_word(value) == word


def test_an_unlistable_default_d_is_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    root = make_root(tmp_path, {"default.d/50-site.conf": "CVMFS_TIMEOUT=7\n",
                                f"config.d/{FQRN}.conf": f"CVMFS_SERVER_URL={URL}\n"})
    assert load(root).timeout_s == 7
    real_listdir = os.listdir

    def no_permission(path: os.PathLike[str] | str) -> list[str]:
        if str(path).endswith("default.d"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", no_permission)
    config = load(root)
    assert config.timeout_s == 5
    assert config.warnings == (
        f"{root / 'default.d'}: cannot be read (Permission denied); ignored",)


def test_inspect_says_an_unreadable_key_file(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_root(tmp_path, {f"config.d/{FQRN}.conf": f"CVMFS_SERVER_URL={URL}\n"})
    real_open = os.open

    def no_permission(path: str, flags: int, *args: int) -> int:
        if str(path).endswith(".pub"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_permission)
    report = inspect_config(FQRN, config_root=root, environ={"HOME": "/home/u"},
                            is_root=False)
    assert report.of(Severity.ERROR) == (
        f"{root / 'keys' / 'example.org.pub'}: Permission denied",)
