"""Configuration end to end: a config tree shaped like an installed client, whose server URL
and keys are enough to establish trust in a freshly published repository."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pycvmfs.config import Settings, load_config, parse_config_text, symlink_environment
from pycvmfs.format.symlinks import expand_symlink
from pycvmfs.repository.source import open_source
from pycvmfs.repository.trust import establish_trust, load_public_keys
from tests.publish_helpers import FQRN, Keys, run_publish


def test_config_tree_leads_to_a_trusted_manifest(tmp_path: Path, keys: Keys) -> None:
    source = tmp_path / "src"
    (source / "dir").mkdir(parents=True)
    (source / "dir" / "file").write_text("hello")
    result = run_publish(source, tmp_path / "srv" / FQRN, keys)

    etc = tmp_path / "etc"
    (etc / "domain.d").mkdir(parents=True)
    (etc / "config.d").mkdir()
    (etc / "domain.d" / "pycvmfs.org.conf").write_text(
        "# keys of the domain\n"
        f"export CVMFS_KEYS_DIR='{keys.keys_dir}'\n"
        'CVMFS_HTTP_PROXY="DIRECT"  # no squid here\n'
    )
    (etc / "config.d" / f"{FQRN}.conf").write_text(
        f"CVMFS_SERVER_URL={tmp_path}/srv/@fqrn@\n"
        "CVMFS_MAX_TTL=${CVMFS_MAX_TTL:-15}\n"
        "CVMFS_SITE=$SITE_NAME\n"
    )
    config = load_config(FQRN, config_root=etc, environ={"HOME": str(tmp_path / "home"),
                                                         "SITE_NAME": "lab"}, is_root=False)
    assert config.warnings == ()
    assert config.server_urls == (f"{tmp_path}/srv/{FQRN}",)
    assert config.public_key_files == (keys.public_key_file,)
    assert config.max_ttl_minutes == 15 and not config.http_proxy_defaulted
    assert config.cache_dir == tmp_path / "home" / ".cache" / "pycvmfs" / "shared"

    trusted = establish_trust(open_source(config.server_urls[0]), config.fqrn,
                              load_public_keys(config.public_key_files),
                              now=dt.datetime.now(dt.UTC))
    assert trusted.root_hash == result.manifest.root_hash

    env = symlink_environment(config, {"PATH": "/bin"})
    assert expand_symlink("/opt/$(CVMFS_SITE)/$(CVMFS_FQRN)", env) == f"/opt/lab/{FQRN}"


# --- differential: the parser against bash itself -------------------------------------------

BASH = shutil.which("bash")
_CHARS = "x:/~-#{}=@ \t\n'\"\\$"
_FRAGMENT = st.one_of(
    st.text(st.sampled_from(list("x:/~-#{}=@")), min_size=1, max_size=4),  # unquoted
    st.text(st.sampled_from(list(_CHARS.replace("'", ""))), max_size=5).map(lambda t: f"'{t}'"),
    st.text(st.sampled_from(list(_CHARS)), max_size=5).map(
        lambda t: '"' + t.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'),
    st.sampled_from(["$A", "${B}", "$HOME", "${A:-x y}", "${B:=z}", "${C:-'q'}", "\\~",
                     "\\ ", "\\\n", "~", "$", "\"$A\"", "\"${NOPE:-$HOME}\""]),
)
_STATEMENT = st.tuples(st.sampled_from(["", "export ", "  "]), st.sampled_from("AB"),
                       st.lists(_FRAGMENT, max_size=4).map("".join),
                       st.sampled_from(["", " # c'x", "  ", "\t#"]))
_FILE = st.lists(_STATEMENT, min_size=1, max_size=4).map(
    lambda statements: "\n".join(f"{p}{k}={v}{c}" for p, k, v, c in statements))


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_FILE)
def test_accepted_text_means_what_bash_means(text: str) -> None:
    """Whatever the parser accepts without a warning, bash assigns identically."""
    state = Settings({"HOME": "/h"})
    if parse_config_text(text, source="f", settings=state):
        return  # rejected lines are never run: they may be commands
    names = " ".join(state.values)
    script = f'source /dev/stdin <<<"$1"; for k in {names}; do printf "%s\\0" "${{!k}}"; done'
    assert BASH is not None
    run = subprocess.run([BASH, "--norc", "--noprofile", "-c", script, "bash", text],
                         capture_output=True, env={"HOME": "/h"}, timeout=10, check=False)
    assert run.stderr == b""
    assert run.stdout.decode().split("\0")[:-1] == list(state.values.values())
