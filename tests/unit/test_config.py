"""Client configuration: the shell-subset parser, the reference hierarchy, built-in domains,
keys, typed values and cache/proxy defaults (fact sheet 12, 8.1-8.3, 9.1)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pycvmfs.client import cache_config_of_settings
from pycvmfs.config import (
    BUILTIN_DEFAULTS,
    OVERRIDE,
    ClientConfig,
    MagicXattrsVisibility,
    Settings,
    load_config,
    load_settings,
    parse_config_text,
    resolve,
    symlink_environment,
)
from pycvmfs.config_defaults import DOMAINS
from pycvmfs.errors import ConfigError

FQRN = "atlas.example.org"
ROOT_HASH = "0123456789abcdef0123456789abcdef01234567"
ENV = {"HOME": "/home/u", "SITE": "cern", "EMPTY": ""}


def parse(text: str, environ: dict[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    state = Settings(ENV if environ is None else environ)
    warnings = parse_config_text(text, source="f.conf", settings=state)
    return state.values, warnings


# --- parsing --------------------------------------------------------------------------------

PARSE_CASES = [
    ("A=1", {"A": "1"}),
    ("export A=1", {"A": "1"}),
    ("readonly A=1", {"A": "1"}),
    ("export   readonly A=1", {"A": "1"}),
    ("  A=1  ", {"A": "1"}),
    ("A=", {"A": ""}),
    ("A=''", {"A": ""}),
    ("A='x y # z'", {"A": "x y # z"}),
    ('A="x y"', {"A": "x y"}),
    ('A="a\\"b\\\\c\\$d"', {"A": 'a"b\\c$d'}),
    ('A="a\\nb"', {"A": "a\\nb"}),
    ("A=a\\ b", {"A": "a b"}),
    ("A='$SITE'", {"A": "$SITE"}),
    ('A="$SITE"', {"A": "cern"}),
    ("A=$SITE/x", {"A": "cern/x"}),
    ("A=${SITE}x", {"A": "cernx"}),
    ("A=$NOPE", {"A": ""}),
    ("A=${NOPE:-dflt}", {"A": "dflt"}),
    ("A=${EMPTY:-dflt}", {"A": "dflt"}),
    ("A=${SITE:-dflt}", {"A": "cern"}),
    ('A=${NOPE:-"a b"}', {"A": "a b"}),
    ("A=${NOPE:-'$x'}", {"A": "$x"}),
    ("A=${NOPE:-$SITE}", {"A": "cern"}),
    ("A=${NOPE:=set}", {"NOPE": "set", "A": "set"}),
    ("A=x$", {"A": "x$"}),
    ("A=x:~/y:~", {"A": "x:/home/u/y:/home/u"}),
    ("A=x\\:~", {"A": "x:~"}),
    ("A=1 # comment", {"A": "1"}),
    ("A=1#no-comment", {"A": "1#no-comment"}),
    ("# A=1", {}),
    ("", {}),
    ("   \t", {}),
    ("A=1 B=$A", {"A": "1", "B": "1"}),
    ("export A", {}),
    ("A=~/c", {"A": "/home/u/c"}),
    ("A='~/c'", {"A": "~/c"}),
    ("A=x~", {"A": "x~"}),
    ("A=@fqrn@", {"A": "@fqrn@"}),  # templates are replaced after merging
    ("A=1\nB=$A\nA=2", {"A": "2", "B": "1"}),
    ("A='multi\nline'", {"A": "multi\nline"}),
    ('A="x\\\ny"', {"A": "xy"}),
    ("A=x\\\ny", {"A": "xy"}),
    ("A=1\r\nB=2\r\n", {"A": "1", "B": "2"}),
    ("A='it'\"'\"'s'", {"A": "it's"}),
]


@pytest.mark.parametrize(("text", "expected"), PARSE_CASES)
def test_parse(text: str, expected: dict[str, str]) -> None:
    values, warnings = parse(text)
    assert warnings == []
    assert values == expected


MALFORMED = [
    "A=$(hostname)",
    "A=`hostname`",
    'A="`hostname`"',
    'if [ -z "$X" ]; then',
    "fi",
    "A = 1",
    "A=1; B=2",
    "A=1 cmd",
    "1A=2",
    "A=${X#y}",
    "A=${X/y/z}",
    "A=${X",
    "A=$1",
    "A=$$",
    "A=$'x'",
    "A=(1 2)",
    "A=1 > /tmp/x",
    "A=x|y",
    "A='never closed",
    'A="never closed',
]


@pytest.mark.parametrize("line", MALFORMED)
def test_malformed_lines_warn_and_parsing_goes_on(line: str) -> None:
    values, warnings = parse(f"OK1=1\n{line}\nOK2=2")
    assert len(warnings) == 1
    assert warnings[0].startswith("f.conf:2: ")
    assert values.get("A") is None
    # an unterminated quote swallows the rest of the file, anything else only its line
    assert values.get("OK1") == "1"
    if "never closed" not in line:
        assert values.get("OK2") == "2"


def test_continuation_joins_lines_and_warns_only_at_the_end() -> None:
    assert parse("A=x\\\nB=2") == ({"A": "xB=2"}, [])
    assert parse("A=x\\") == ({}, ["f.conf:1: line continuation at the end of the file; ignored"])


def test_readonly_refuses_later_assignments() -> None:
    values, warnings = parse("readonly A=1\nA=2\nreadonly B\nB=3")
    assert values == {"A": "1"}
    assert warnings == [
        "f.conf:2: A is readonly (set in f.conf:1); ignored",
        "f.conf:4: B is readonly (set in an earlier file); ignored",
    ]


def test_statement_is_all_or_nothing() -> None:
    values, warnings = parse("A=1 B=$(x)")
    assert values == {} and len(warnings) == 1


_KEYS = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True).filter(
    lambda k: k not in ("export", "readonly"))
_VALUES = st.text(st.characters(codec="utf-8", exclude_characters="\x00\r"),
                  max_size=30)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(_KEYS, _VALUES, max_size=6), st.booleans())
def test_round_trip_of_quoted_files(pairs: dict[str, str], export: bool) -> None:
    prefix = "export " if export else ""
    text = "# generated\n" + "".join(f"{prefix}{k}={shlex.quote(v)}  # c\n"
                                     for k, v in pairs.items())
    values, warnings = parse(text, environ={})
    assert warnings == []
    assert values == pairs


_SHELLISH = st.text(st.sampled_from(list("AB_=$'\"\\{}()`#:-~; \t\nx")), max_size=60)


@settings(max_examples=300, deadline=None)
@given(_SHELLISH)
def test_parser_never_raises(text: str) -> None:
    values, warnings = parse(text)
    assert all(isinstance(v, str) for v in values.values())
    assert all(w.startswith("f.conf:") for w in warnings)


# --- hierarchy ------------------------------------------------------------------------------


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def make_root(tmp_path: Path, files: dict[str, str] | None = None) -> Path:
    """An /etc/cvmfs with a key for every domain used here."""
    return write(tmp_path / "etc", {"keys/example.org.pub": "k",
                                    "keys/cern.ch/cern-it1.cern.ch.pub": "k",
                                    **(files or {})})


def load(root: Path, fqrn: str = FQRN, *, overrides: dict[str, str] | None = None,
         extra_files: tuple[Path, ...] | list[Path] = (), environ: dict[str, str] | None = None,
         is_root: bool = False) -> ClientConfig:
    """load_config as an ordinary user with HOME=/home/u; FQRN gets a server URL by -o."""
    overrides = dict(overrides or {})
    if fqrn == FQRN:
        overrides.setdefault("CVMFS_SERVER_URL", "http://s1/cvmfs/@fqrn@")
    return load_config(fqrn, config_root=root, extra_files=extra_files, overrides=overrides,
                       environ={"HOME": "/home/u"} if environ is None else environ,
                       is_root=is_root)


LAYERS = [
    "default.conf",
    "default.d/10-a.conf",
    "default.d/20-b.conf",
    "default.local",
    "domain.d/example.org.conf",
    "domain.d/example.org.local",
    "config.d/atlas.example.org.conf",
    "config.d/atlas.example.org.local",
]


def test_hierarchy_order_and_provenance(tmp_path: Path) -> None:
    files = {name: f"CVMFS_X={name}\nCVMFS_L{i}=$CVMFS_X\n" for i, name in enumerate(LAYERS)}
    files["default.d/ignored.txt"] = "CVMFS_X=never"
    root = make_root(tmp_path, files)
    extra = write(tmp_path, {"extra1": "CVMFS_X=extra1", "extra2": "CVMFS_Y=extra2"})
    config = load(root, extra_files=[extra / "extra1", extra / "extra2"])
    assert config.files_read == (*(root / n for n in LAYERS), extra / "extra1", extra / "extra2")
    assert config.settings["CVMFS_X"] == "extra1"
    assert config.origin("CVMFS_X") == f"{extra / 'extra1'}:1"
    for i, name in enumerate(LAYERS):
        assert config.settings[f"CVMFS_L{i}"] == name  # each layer saw itself as latest
    assert config.origin("CVMFS_L3") == f"{root / 'default.local'}:2"
    assert config.origin("CVMFS_TIMEOUT") == BUILTIN_DEFAULTS
    assert config.origin("CVMFS_NOPE") == "unset"
    assert config.settings["CVMFS_FQRN"] == FQRN


def test_overrides_win_and_are_literal(tmp_path: Path) -> None:
    root = make_root(tmp_path, {"config.d/atlas.example.org.local": "CVMFS_TIMEOUT=7"})
    extra = write(tmp_path, {"x.conf": "CVMFS_TIMEOUT=8"})
    config = load(root, extra_files=[extra / "x.conf"],
                  overrides={"CVMFS_TIMEOUT": "9", "CVMFS_Z": "$HOME"})
    assert config.timeout_s == 9
    assert config.origin("CVMFS_TIMEOUT") == OVERRIDE
    assert config.settings["CVMFS_Z"] == "$HOME"


def test_bad_override_name_and_missing_config_file(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    with pytest.raises(ConfigError, match="not a parameter name"):
        load(root, overrides={"CVMFS X": "1"})
    with pytest.raises(ConfigError, match="nowhere.conf: no such file"):
        load(root, extra_files=[tmp_path / "nowhere.conf"])


@pytest.mark.parametrize("fqrn", ["", "../x", "a/b", "a..b", ".a", "a b", "a."])
def test_bad_repository_names(tmp_path: Path, fqrn: str) -> None:
    with pytest.raises(ConfigError, match="not a repository name"):
        load_settings(fqrn, config_root=tmp_path, environ={}, is_root=False)


def test_config_fqrn_is_visible_while_parsing_and_templates(tmp_path: Path) -> None:
    root = make_root(tmp_path, {"default.local": "CVMFS_A=/x/$CVMFS_FQRN\n"
                                "CVMFS_B=@org@-@fqrn@-@other@\n"})
    config = load(root, overrides={"CVMFS_SERVER_URL": "http://a/cvmfs/@fqrn@; http://b/@org@"})
    assert config.settings["CVMFS_A"] == "/x/atlas.example.org"
    assert config.settings["CVMFS_B"] == "atlas-atlas.example.org-@other@"
    assert config.server_urls == ("http://a/cvmfs/atlas.example.org", "http://b/atlas")


def test_warnings_are_collected_not_raised(tmp_path: Path) -> None:
    root = make_root(tmp_path, {"default.local": "SITE_A=1\n$(rm -rf /)\n"})
    config = load(root)
    assert config.settings["SITE_A"] == "1"
    assert config.warnings == (
        f"{root / 'default.local'}:2: not a KEY=VALUE assignment: '$(rm' "
        "(shell code is not run); ignored",)


def test_config_root_from_environment(tmp_path: Path) -> None:
    root = make_root(tmp_path, {"default.local": "CVMFS_A=from-env-root"})
    merged = load_settings(FQRN, environ={"PYCVMFS_CONFIG_ROOT": str(root), "HOME": "/h"},
                           is_root=False)
    assert merged.config_root == root
    assert merged.values["CVMFS_A"] == "from-env-root"


def test_package_readonly_lines_do_not_warn(tmp_path: Path) -> None:
    root = make_root(tmp_path, {"default.conf": "readonly CVMFS_USER=cvmfs\n"
                                                "readonly CVMFS_MOUNT_DIR=/cvmfs\n"})
    assert load(root).warnings == ()


def test_unreadable_file_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_root(tmp_path, {"default.local": "CVMFS_A=1"})
    real_open = os.open

    def no_permission(path: str, flags: int, *args: int) -> int:
        if str(path).endswith("default.local"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_permission)
    config = load(root)
    assert config.warnings[0].startswith(f"{root / 'default.local'}: cannot be read")
    assert "CVMFS_A" not in config.settings
    with pytest.raises(ConfigError, match="configuration file.*Permission denied"):
        load(root, extra_files=[root / "default.local"])


def test_a_directory_in_place_of_a_file_is_a_warning(tmp_path: Path) -> None:
    """Issue 12: a file of the hierarchy that cannot be read is said, never fatal; the
    same path named by --config is an error."""
    root = make_root(tmp_path)
    (root / "default.local").mkdir()
    assert load(root).warnings == (
        f"{root / 'default.local'}: cannot be read (is a directory); ignored",)
    with pytest.raises(ConfigError, match="default.local: is a directory"):
        load(root, extra_files=[root / "default.local"])


def test_readonly_defaults(tmp_path: Path) -> None:
    root = make_root(tmp_path, {"default.local": "CVMFS_USER=me"})
    config = load(root)
    assert config.settings["CVMFS_USER"] == "cvmfs"
    assert "CVMFS_USER is readonly" in config.warnings[0]


# --- built-in domains -----------------------------------------------------------------------


CERN_URLS = (
    "http://cvmfs-stratum-one.cern.ch/cvmfs/unpacked.cern.ch",
    "http://cernvmfs.gridpp.rl.ac.uk/cvmfs/unpacked.cern.ch",
    "http://cvmfs-s1bnl.opensciencegrid.org/cvmfs/unpacked.cern.ch",
    "http://cvmfs-s1fnal.opensciencegrid.org/cvmfs/unpacked.cern.ch",
)


def test_unpacked_cern_ch_needs_only_the_keys(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    config = load(root, "unpacked.cern.ch")
    assert config.server_urls == CERN_URLS
    assert config.use_geoapi is True
    assert config.public_key_files == (root / "keys/cern.ch/cern-it1.cern.ch.pub",)
    assert config.origin("CVMFS_SERVER_URL") == "<built-in domain.d/cern.ch.conf>"
    assert config.http_proxy == "DIRECT" and config.http_proxy_defaulted
    assert config.files_read == ()


@pytest.mark.parametrize(("fqrn", "first", "count"), [
    ("sft.cern.ch", "http://cvmfs-stratum-one.cern.ch/cvmfs/sft.cern.ch", 4),
    ("dirac.egi.eu", "http://cvmfs-egi.gridpp.rl.ac.uk:8000/cvmfs/dirac.egi.eu", 4),
    ("oasis.opensciencegrid.org",
     "http://cvmfs-egi.gridpp.rl.ac.uk:8000/cvmfs/oasis.opensciencegrid.org", 5),
])
def test_builtin_domains(tmp_path: Path, fqrn: str, first: str, count: int) -> None:
    domain = fqrn.partition(".")[2]
    root = make_root(tmp_path, {f"keys/{domain}/{domain}.pub": "k"})
    config = load(root, fqrn)
    assert config.server_urls[0] == first and len(config.server_urls) == count
    assert config.settings["CVMFS_KEYS_DIR"] == str(root / "keys" / domain)
    cdn = load(write(root, {"default.local": "CVMFS_USE_CDN=yes"}), fqrn)
    assert all(".openhtc.io" in url and url.endswith(fqrn) for url in cdn.server_urls)
    assert len(cdn.server_urls) == len(DOMAINS[domain].cdn_server_urls)


def test_shell_conditionals_are_not_evaluated(tmp_path: Path) -> None:
    """Shaped like the shipped files: control lines warn, every assignment applies."""
    root = make_root(tmp_path, {
        "default.conf": 'if [ "x$CVMFS_BASE_ENV" = "x" ]; then\n  readonly CVMFS_USER=cvmfs\n'
                        "  readonly CVMFS_BASE_ENV=1\nfi\n",
        "domain.d/cern.ch.conf": 'if [ "$CVMFS_USE_CDN" = "yes" ]; then\n'
                                 '  CVMFS_SERVER_URL="http://cdn/cvmfs/@fqrn@"\nelse\n'
                                 '  CVMFS_SERVER_URL="http://s1/cvmfs/@fqrn@"\nfi\n'})
    config = load(root, "sft.cern.ch")
    assert config.server_urls == ("http://s1/cvmfs/sft.cern.ch",)
    assert config.settings["CVMFS_BASE_ENV"] == "1"
    conf, domain = root / "default.conf", root / "domain.d/cern.ch.conf"
    lines = [f"{conf}:1", f"{conf}:4", f"{domain}:1", f"{domain}:3", f"{domain}:5"]
    assert [w.partition(": ")[0] for w in config.warnings] == lines
    assert config.warnings[0].endswith(": shell 'if' is not evaluated (all branches apply); "
                                       "ignored")


def test_use_openhtc_is_the_old_name_of_use_cdn(tmp_path: Path) -> None:
    root = make_root(tmp_path, {"default.local": "CVMFS_USE_OPENHTC=yes"})
    first = load(root, "sft.cern.ch").server_urls[0]
    assert first == "http://s1cern-cvmfs.openhtc.io/cvmfs/sft.cern.ch"


def test_builtin_domain_precedence(tmp_path: Path) -> None:
    """As the config repository's domain file: above default.local, below domain.d."""
    root = make_root(tmp_path, {"default.local": "CVMFS_SERVER_URL=http://local/@fqrn@\n"
                                                 "CVMFS_HTTP_PROXY='http://squid:3128'"})
    config = load(root, "sft.cern.ch")
    assert config.server_urls[0].startswith("http://cvmfs-stratum-one.cern.ch/")
    assert config.http_proxy == "http://squid:3128" and not config.http_proxy_defaulted
    write(root, {"domain.d/cern.ch.local": "CVMFS_SERVER_URL=http://mirror/cvmfs/@fqrn@"})
    assert load(root, "sft.cern.ch").server_urls == ("http://mirror/cvmfs/sft.cern.ch",)


def test_no_server_url(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no CVMFS_SERVER_URL for a\.b\.c.*'b\.c'"):
        load_config("a.b.c", config_root=make_root(tmp_path), environ={}, is_root=False)


# --- keys -----------------------------------------------------------------------------------


def test_public_key_variable_wins(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    k = write(tmp_path, {"k/a.pub": "k", "k/b.pub": "k", "d/c.pub": "k", "d/x.txt": "no"})
    keys = f"{k / 'k/b.pub'}::{k / 'k/a.pub'}:{k / 'd'}"
    config = load(root, overrides={"CVMFS_PUBLIC_KEY": keys})
    assert config.public_key_files == (k / "k/b.pub", k / "k/a.pub", k / "d/c.pub")


def test_public_key_missing_file_names_origin(tmp_path: Path) -> None:
    root = make_root(tmp_path, {"default.local": "CVMFS_PUBLIC_KEY=/nope.pub"})
    with pytest.raises(ConfigError, match=r"CVMFS_PUBLIC_KEY \(set in .*default.local:1\) "
                                          r"names /nope.pub: no such file"):
        load(root)


def test_keys_dir_then_domain_then_user(tmp_path: Path) -> None:
    root = write(tmp_path / "etc", {"keys/example.org/d.pub": "k", "my/m.pub": "k"})
    assert load(root).public_key_files == (root / "keys/example.org/d.pub",)
    write(root, {"keys/top.pub": "k"})
    assert load(root).public_key_files == (root / "keys/top.pub",)
    write(root, {"default.local": f"CVMFS_KEYS_DIR={root / 'my'}"})
    assert load(root).public_key_files == (root / "my/m.pub",)


def test_user_keys_dir(tmp_path: Path) -> None:
    root = write(tmp_path / "etc", {})
    user = write(tmp_path / "xdg", {"pycvmfs/keys/cern.ch/cern-it4.cern.ch.pub": "k"})
    config = load(root, "sft.cern.ch", environ={"XDG_CONFIG_HOME": str(user), "HOME": "/h"})
    assert config.public_key_files == (user / "pycvmfs/keys/cern.ch/cern-it4.cern.ch.pub",)


def test_no_keys_says_where_it_looked(tmp_path: Path) -> None:
    root = write(tmp_path / "etc", {})
    with pytest.raises(ConfigError) as info:
        load(root, "sft.cern.ch", environ={"HOME": str(tmp_path / "home")})
    message = str(info.value)
    for place in (root / "keys/cern.ch", tmp_path / "home/.config/pycvmfs/keys/cern.ch",
                  tmp_path / "home/.config/pycvmfs/keys"):
        assert str(place) in message
    assert "cern-it1.cern.ch.pub" in message and "CVMFS_PUBLIC_KEY" in message
    with pytest.raises(ConfigError, match=r"atlas\.example\.org\.pub") as info:
        load(root, environ={"HOME": str(tmp_path / "home")})
    assert str(root / "keys") in str(info.value)


# --- typed values ---------------------------------------------------------------------------


@pytest.mark.parametrize(("word", "expected"), [
    ("yes", True), ("YES", True), ("on", True), ("1", True), ("True", True),
    ("no", False), ("Off", False), ("0", False), ("false", False),
])
def test_booleans(tmp_path: Path, word: str, expected: bool) -> None:
    assert load(make_root(tmp_path), overrides={"CVMFS_USE_GEOAPI": word}).use_geoapi is expected


@pytest.mark.parametrize(("key", "value", "what"), [
    ("CVMFS_USE_GEOAPI", "maybe", "not a boolean"),
    ("CVMFS_TIMEOUT", "5s", "not an integer"),
    ("CVMFS_MAX_TTL", "1.5", "not an integer"),
    ("CVMFS_QUOTA_LIMIT", "0", "must be -1 or at least 1 MB"),
    ("CVMFS_MAGIC_XATTRS_VISIBILITY", "sometimes", "use always, rootonly or never"),
    ("CVMFS_REPOSITORY_DATE", "yesterday", "expected YYYY-MM-DDTHH:MM:SSZ"),
    ("CVMFS_ROOT_HASH", "abc", "not a CernVM-FS hash"),
])
def test_bad_values_name_key_value_and_file(tmp_path: Path, key: str, value: str,
                                            what: str) -> None:
    root = make_root(tmp_path, {"config.d/atlas.example.org.conf": f"\n{key}={value}"})
    with pytest.raises(ConfigError) as info:
        load(root)
    message = str(info.value)
    assert key in message and value in message and what in message
    assert f"{root / 'config.d/atlas.example.org.conf'}:2" in message


def test_defaults(tmp_path: Path) -> None:
    config = load(make_root(tmp_path))
    assert (config.timeout_s, config.timeout_direct_s, config.low_speed_limit) == (5, 10, 1024)
    assert (config.max_retries, config.backoff_init_s, config.backoff_max_s) == (1, 2, 10)
    assert (config.proxy_reset_after_s, config.host_reset_after_s) == (300, 1800)
    assert config.quota_limit_mb == 4000 and config.shared_cache and config.claim_ownership
    assert config.kcache_timeout_s == 60 and config.max_ttl_minutes is None
    assert config.auto_update and not config.use_geoapi and not config.follow_redirects
    assert config.max_servers == 0 and not config.strict_mount and not config.world_readable
    assert (config.repository_tag, config.repository_date, config.root_hash) == (None,) * 3
    assert config.magic_xattrs_visibility is MagicXattrsVisibility.ROOTONLY
    assert config.fallback_proxy == ""


def test_revision_pins_and_ttl(tmp_path: Path) -> None:
    config = load(make_root(tmp_path), overrides={
        "CVMFS_REPOSITORY_TAG": "v1", "CVMFS_REPOSITORY_DATE": "2024-01-01T00:00:00Z",
        "CVMFS_ROOT_HASH": ROOT_HASH, "CVMFS_AUTO_UPDATE": "no", "CVMFS_MAX_TTL": "15"})
    assert (config.repository_tag, config.repository_date, config.root_hash) == (
        "v1", "2024-01-01T00:00:00Z", ROOT_HASH)
    assert not config.auto_update and config.max_ttl_minutes == 15


@pytest.mark.parametrize(("settings_", "expected"), [
    ({"CVMFS_HIDE_MAGIC_XATTRS": "yes"}, MagicXattrsVisibility.NEVER),
    ({"CVMFS_HIDE_MAGIC_XATTRS": "no"}, MagicXattrsVisibility.ALWAYS),
    ({"CVMFS_MAGIC_XATTRS_VISIBILITY": "Always", "CVMFS_HIDE_MAGIC_XATTRS": "yes"},
     MagicXattrsVisibility.ALWAYS),
    ({"CVMFS_MAGIC_XATTRS_VISIBILITY": "never"}, MagicXattrsVisibility.NEVER),
])
def test_magic_xattrs_visibility(tmp_path: Path, settings_: dict[str, str],
                                 expected: MagicXattrsVisibility) -> None:
    assert load(make_root(tmp_path), overrides=settings_).magic_xattrs_visibility is expected


# --- cache and proxy ------------------------------------------------------------------------


def test_cache_dir_for_ordinary_user_and_root(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    assert load(root).cache_dir == Path("/home/u/.cache/pycvmfs/shared")
    xdg = load(root, environ={"XDG_CACHE_HOME": "/xdg/", "HOME": "/h"})
    assert xdg.cache_base == Path("/xdg/pycvmfs")
    assert load(root, is_root=True).cache_dir == Path("/var/lib/cvmfs/shared")


def test_package_default_conf_cache_base_is_not_used_by_users(tmp_path: Path) -> None:
    root = make_root(tmp_path, {"default.conf": "CVMFS_CACHE_BASE=/var/lib/cvmfs\n"})
    user = load(root)
    assert user.cache_base == Path("/home/u/.cache/pycvmfs")
    assert "not root" in user.origin("CVMFS_CACHE_BASE")
    assert load(root, is_root=True).cache_base == Path("/var/lib/cvmfs")
    write(root, {"default.local": "CVMFS_CACHE_BASE=/var/lib/cvmfs"})
    assert load(root).cache_base == Path("/var/lib/cvmfs")  # an admin's choice is obeyed


@pytest.mark.parametrize(("settings_", "cache_dir"), [
    ({"CVMFS_CACHE_BASE": "/c"}, "/c/shared"),
    ({"CVMFS_CACHE_BASE": "/c", "CVMFS_SHARED_CACHE": "no"}, f"/c/{FQRN}"),
    ({"CVMFS_CACHE_BASE": "/c", "CVMFS_CACHE_DIR": "/d"}, "/d"),
    ({"CVMFS_CACHE_BASE": "~/c"}, "/home/u/c/shared"),
])
def test_cache_dir_derivation(tmp_path: Path, settings_: dict[str, str], cache_dir: str) -> None:
    assert load(make_root(tmp_path), overrides=settings_).cache_dir == Path(cache_dir)


def test_alien_cache(tmp_path: Path) -> None:
    root = make_root(tmp_path, {"default.local": "CVMFS_ALIEN_CACHE=/alien"})
    with pytest.raises(ConfigError, match=r"CVMFS_QUOTA_LIMIT=-1 \(is 4000, set in "
                                          r"<built-in default.conf>\)"):
        load(root)
    config = load(root, overrides={"CVMFS_QUOTA_LIMIT": "-1", "CVMFS_SHARED_CACHE": "no"})
    assert config.alien_cache == Path("/alien") and config.quota_limit_mb == -1


def test_proxy_settings(tmp_path: Path) -> None:
    root = make_root(tmp_path, {"default.local": 'CVMFS_HTTP_PROXY=""'})
    assert load(root).http_proxy == "DIRECT" and load(root).http_proxy_defaulted
    config = load(root, overrides={"CVMFS_HTTP_PROXY": "http://a:3128|http://b:3128;DIRECT",
                                   "CVMFS_FALLBACK_PROXY": "http://fb:3128"})
    assert config.http_proxy == "http://a:3128|http://b:3128;DIRECT"
    assert config.fallback_proxy == "http://fb:3128" and not config.http_proxy_defaulted


def test_symlink_environment(tmp_path: Path) -> None:
    config = load(make_root(tmp_path), overrides={"CVMFS_TIMEOUT": "7", "MY_VAR": "x"})
    env = symlink_environment(config, {"PATH": "/bin", "CVMFS_TIMEOUT": "1"})
    assert env["PATH"] == "/bin" and env["CVMFS_TIMEOUT"] == "7" and env["MY_VAR"] == "x"
    assert env["CVMFS_FQRN"] == FQRN and env["CVMFS_CACHE_BASE"] == "/home/u/.cache/pycvmfs"


def test_the_cache_is_found_without_server_url_or_key(tmp_path: Path) -> None:
    """`pycvmfs cache status FQRN` needs only the cache settings (issue 12)."""
    root = write(tmp_path / "etc", {"default.local": "CVMFS_CACHE_BASE=/c\n"})  # no key
    merged = load_settings("nokey.example.org", config_root=root, environ={"HOME": "/h"},
                           is_root=False)
    with pytest.raises(ConfigError):
        resolve(merged)  # a mount needs a server URL and a key
    cache = cache_config_of_settings(merged)
    assert (cache.directory, cache.base) == (Path("/c/shared"), Path("/c"))
