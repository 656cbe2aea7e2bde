"""Every typed key the client reads: a bad value is one line naming key, value and the
`file:line` it was set in (issue 9, class 13), never a traceback. The cases come from the
tables in `config_values`, so a key added there is tested here without more code."""

from __future__ import annotations

from pathlib import Path

import pytest

from pycvmfs.config import ClientConfig, load_config
from pycvmfs.config_values import BOOLEAN_KEYS, INTEGER_KEYS, IntegerKey, check_url
from pycvmfs.errors import ConfigError
from pycvmfs.network.proxies import DIRECT, Proxy, parse_proxies, parse_server_urls

FQRN = "atlas.example.org"
CONF = "config.d/atlas.example.org.conf"


def load_with(tmp_path: Path, key: str, value: str) -> ClientConfig:
    """`key=value` on line 2 of the repository's config.d file."""
    root = tmp_path / "etc"
    (root / "config.d").mkdir(parents=True)
    (root / "keys").mkdir()
    (root / "keys" / "example.org.pub").write_text("k")
    quoted = "'" + value.replace("'", "'\\''") + "'"
    (root / CONF).write_text(f"CVMFS_SERVER_URL=http://s1/cvmfs/@fqrn@\n{key}={quoted}\n")
    return load_config(FQRN, config_root=root, environ={"HOME": "/home/u"}, is_root=False)


def assert_refused(tmp_path: Path, key: str, value: str, *needles: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_with(tmp_path, key, value)
    message = str(info.value)
    assert "\n" not in message
    templated = value.replace("@fqrn@", FQRN)
    assert message.startswith(f"{key}={templated!r} (set in {tmp_path / 'etc' / CONF}:2): "), \
        message
    for needle in needles:
        assert needle in message, message
    return message


def _bad_numbers(spec: IntegerKey) -> list[str]:
    values = ["x", "5s", "1.5", "1e3", "0x10", "1_0", "\uff15", "- 1", "99" * 20]
    if spec.minimum - 1 not in spec.also and not spec.clamp_below:
        values.append(str(spec.minimum - 1))
    if spec.minimum - 1000 not in spec.also and not spec.clamp_below:
        values.append(str(spec.minimum - 1000))
    values.append(str(spec.maximum + 1))
    return values


INTEGER_CASES = [(key, value) for key, spec in INTEGER_KEYS.items()
                 for value in _bad_numbers(spec)]


@pytest.mark.parametrize(("key", "value"), INTEGER_CASES)
def test_bad_numbers_are_refused(tmp_path: Path, key: str, value: str) -> None:
    assert_refused(tmp_path, key, value, INTEGER_KEYS[key].unit)


@pytest.mark.parametrize("key", list(INTEGER_KEYS))
def test_the_range_ends_are_accepted(tmp_path: Path, key: str) -> None:
    spec = INTEGER_KEYS[key]
    for value in (spec.minimum, spec.maximum, *spec.also):
        load_with(tmp_path / str(value), key, f" {value} ")


def test_the_issue_s_timeout_zero(tmp_path: Path) -> None:
    message = assert_refused(tmp_path, "CVMFS_TIMEOUT", "0", "at least 1 seconds")
    assert "no timeout at all" in message  # why 0 is refused where the reference takes it


def test_a_negative_kernel_cache_timeout_is_zero_as_in_the_reference(tmp_path: Path) -> None:
    config = load_with(tmp_path, "CVMFS_KCACHE_TIMEOUT", "-5")
    assert config.kcache_timeout_s == 0
    assert config.warnings == (f"CVMFS_KCACHE_TIMEOUT='-5' (set in {tmp_path / 'etc' / CONF}:2):"
                               " below 0, 0 seconds used (as the reference does)",)


@pytest.mark.parametrize(("key", "value"), [(key, value) for key in BOOLEAN_KEYS
                                            for value in ("maybe", "2", "y", "enabled")])
def test_bad_booleans_are_refused(tmp_path: Path, key: str, value: str) -> None:
    assert_refused(tmp_path, key, value, "not a boolean")


@pytest.mark.parametrize(("key", "value", "needle"), [
    ("CVMFS_HTTP_PROXY", "http://[::1;DIRECT", "Invalid IPv6 URL"),
    ("CVMFS_HTTP_PROXY", "http://[::1]:3128|http://squid:99999", "not a valid URL"),
    ("CVMFS_HTTP_PROXY", "http://squid:port", "not a valid URL"),
    ("CVMFS_HTTP_PROXY", "http://squid :3128", "space or control character"),
    ("CVMFS_HTTP_PROXY", "http://a\x7fb:3128", "space or control character"),
    ("CVMFS_HTTP_PROXY", "ftp://squid:21", "not an http(s) URL"),
    ("CVMFS_HTTP_PROXY", "http://:3128", "no host name"),
    ("CVMFS_HTTP_PROXY", "auto", "not supported"),
    ("CVMFS_HTTP_PROXY", ";|;", "no proxy in it"),
    ("CVMFS_FALLBACK_PROXY", "http://[::1", "Invalid IPv6 URL"),
    ("CVMFS_FALLBACK_PROXY", "socks5://x:1080", "not an http(s) URL"),
    ("CVMFS_SERVER_URL", "http://[::1/cvmfs/@fqrn@", "Invalid IPv6 URL"),
    ("CVMFS_SERVER_URL", "http://s1/cvmfs/@fqrn@;http://s2:70000/cvmfs/@fqrn@",
     "not a valid URL"),
    ("CVMFS_SERVER_URL", "/srv/cvmfs/@fqrn@", "not an http(s) URL"),
    ("CVMFS_SERVER_URL", "http://s1/cvmfs/@fqrn@\nX=1", "space or control character"),
    ("CVMFS_MAGIC_XATTRS_VISIBILITY", "sometimes", "use always, rootonly or never"),
    ("PYCVMFS_CPU_POLICY", "two", "use adaptive, one or all"),
    ("CVMFS_REPOSITORY_DATE", "2024-13-01T00:00:00Z", "expected YYYY-MM-DDTHH:MM:SSZ"),
    ("CVMFS_ROOT_HASH", "ABCDEF0123456789abcdef0123456789abcdef01", "not a CernVM-FS hash"),
    ("CVMFS_ROOT_HASH", "0123456789abcdef0123456789abcdef01234567-md4", "not a CernVM-FS hash"),
])
def test_bad_urls_and_words_are_refused(tmp_path: Path, key: str, value: str,
                                        needle: str) -> None:
    assert_refused(tmp_path, key, value, needle)


def test_long_values_are_shortened_in_messages(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_with(tmp_path, "CVMFS_TIMEOUT", "9" * 100_000)
    assert len(str(info.value)) < 400


def test_good_proxy_and_server_values(tmp_path: Path) -> None:
    config = load_with(tmp_path, "CVMFS_HTTP_PROXY",
                       "http://[::1]:3128|squid.example.org:3128;https://p:8443;DIRECT")
    assert parse_proxies(config.http_proxy).groups == (
        (Proxy("http://[::1]:3128"), Proxy("http://squid.example.org:3128")),
        (Proxy("https://p:8443"),), (DIRECT,))
    assert parse_server_urls("http://[::1]:8000/cvmfs/x/;https://s/cvmfs/x") == (
        "http://[::1]:8000/cvmfs/x", "https://s/cvmfs/x")


@pytest.mark.parametrize("url", ["http://[::1", "http://h:99999", "http://h x", "ftp://h",
                                 "http://", "http://h\r\nX: y"])
def test_network_parsers_refuse_what_config_refuses(url: str) -> None:
    """Callers that skip `config` (the `--proxy` of `pycvmfs ls`) get the same checks."""
    with pytest.raises(ConfigError):
        check_url(url, "server URL")
    with pytest.raises(ConfigError):
        parse_server_urls(url)
    with pytest.raises(ConfigError):
        parse_proxies(url)


@pytest.mark.parametrize(("value", "cpus"), [("0,1", {0, 1}), (" 3 ", {3}), ("2, 0,2", {0, 2})])
def test_cpu_affinity_is_a_list_as_the_reference_reads_it(tmp_path: Path, value: str,
                                                          cpus: set[int]) -> None:
    config = load_with(tmp_path, "CVMFS_CPU_AFFINITY", value)
    assert config.cpu_affinity == cpus and config.cpu_policy == "adaptive"


@pytest.mark.parametrize(("value", "policy"), [("", "adaptive"), ("One", "one"), ("all", "all")])
def test_cpu_policy(tmp_path: Path, value: str, policy: str) -> None:
    assert load_with(tmp_path, "PYCVMFS_CPU_POLICY", value).cpu_policy == policy


@pytest.mark.parametrize("value", ["0-3", "a", "1,,2", "-1", "1;2", "\uff11", "9" * 7])
def test_cpu_affinity_that_the_reference_would_misread_is_refused(tmp_path: Path,
                                                                  value: str) -> None:
    """The reference reads `0-3` as CPU 0 and a word as CPU 0: refused, with the fix."""
    assert_refused(tmp_path, "CVMFS_CPU_AFFINITY", value, "CPU numbers separated by commas",
                   "CPU by CPU")
