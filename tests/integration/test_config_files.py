"""Configuration end to end: a config tree shaped like an installed client, whose server URL
and keys are enough to establish trust in a freshly published repository."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pycvmfs.config import Settings, load_config, parse_config_text, symlink_environment
from pycvmfs.format.symlinks import expand_symlink
from pycvmfs.repository.source import open_source
from pycvmfs.repository.trust import establish_trust, load_public_keys
from tests.mounting import DEMO_KEY, DEMO_REPO, cli_mount, force_unmount, is_mounted, pycvmfs
from tests.publish_helpers import FQRN, Keys, run_publish
from tests.servers import NEEDS_FUSE_AND_NGINX, Nginx, nginx_binary, shared_scratch


@pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed")
def test_config_tree_leads_to_a_trusted_manifest(tmp_path: Path, keys: Keys) -> None:
    source = tmp_path / "src"
    (source / "dir").mkdir(parents=True)
    (source / "dir" / "file").write_text("hello")
    with shared_scratch("pycvmfs-config-") as scratch, Nginx() as server:
        result = run_publish(source, scratch / FQRN, keys)
        base_url = server.publish(f"cvmfs/{FQRN}", scratch / FQRN).rsplit("/", 1)[0]
        etc = tmp_path / "etc"
        (etc / "domain.d").mkdir(parents=True)
        (etc / "config.d").mkdir()
        (etc / "domain.d" / "pycvmfs.org.conf").write_text(
            "# keys of the domain\n"
            f"export CVMFS_KEYS_DIR='{keys.keys_dir}'\n"
            'CVMFS_HTTP_PROXY="DIRECT"  # no squid here\n'
        )
        (etc / "config.d" / f"{FQRN}.conf").write_text(
            f"CVMFS_SERVER_URL={base_url}/@fqrn@\n"
            "CVMFS_MAX_TTL=${CVMFS_MAX_TTL:-15}\n"
            "CVMFS_SITE=$SITE_NAME\n"
        )
        config = load_config(FQRN, config_root=etc, environ={"HOME": str(tmp_path / "home"),
                                                             "SITE_NAME": "lab"}, is_root=False)
        assert config.warnings == (  # issue 12: said, and still seen by variant symlinks
            f"{etc / 'config.d' / f'{FQRN}.conf'}:3: unknown parameter CVMFS_SITE (did you "
            "mean CVMFS_USER?)",)
        assert config.server_urls == (f"{base_url}/{FQRN}",)
        assert config.public_key_files == (keys.public_key_file,)
        assert config.max_ttl_minutes == 15 and not config.http_proxy_defaulted
        assert config.cache_dir == tmp_path / "home" / ".cache" / "pycvmfs" / "shared"

        trusted = establish_trust(open_source(config.server_urls[0]), config.fqrn,
                                  load_public_keys(config.public_key_files),
                                  now=dt.datetime.now(dt.UTC))
        assert trusted.root_hash == result.manifest.root_hash

    env = symlink_environment(config, {"PATH": "/bin"})
    assert expand_symlink("/opt/$(CVMFS_SITE)/$(CVMFS_FQRN)", env) == f"/opt/lab/{FQRN}"


# --- `pycvmfs mount` and the files it reads ---------------------------------------------------

DEMO_FQRN = "demo.pycvmfs.org"


def _demo_config(tmp_path: Path, server: Nginx) -> tuple[Path, dict[str, str]]:
    """A config root for the bundled demo repository served by `server`, and the mount's
    environment (HOME and the cache inside tmp_path)."""
    url = server.publish(f"cvmfs/{DEMO_FQRN}", DEMO_REPO).rsplit("/", 1)[0]
    root = tmp_path / "etc-cvmfs"
    (root / "config.d").mkdir(parents=True)
    (root / "domain.d").mkdir()
    (root / "config.d" / f"{DEMO_FQRN}.conf").write_text(
        f"CVMFS_SERVER_URL={url}/@fqrn@\nCVMFS_PUBLIC_KEY={DEMO_KEY}\n"
        f"CVMFS_CACHE_BASE={tmp_path / 'cache'}\nCVMFS_HTTP_PROXY=DIRECT\n"
        "CVMFS_MAX_RETRIES=0\nCVMFS_TIMEOUT_DIRECT=3\n")
    env = dict(os.environ, PYCVMFS_CONFIG_ROOT=str(root), HOME=str(tmp_path))
    return root, env


@pytest.mark.parametrize("_", [pytest.param(None, marks=NEEDS_FUSE_AND_NGINX)])
def test_root_mount_refuses_a_planted_domain_file(tmp_path: Path, _: None) -> None:
    """The issue's case: a world-writable domain.d file owned by another user that would
    send a root mount to another server: refused in one line, nothing mounted."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with Nginx() as server:
        root, env = _demo_config(tmp_path, server)
        planted = root / "domain.d" / "pycvmfs.org.conf"
        planted.write_text("CVMFS_SERVER_URL=http://127.0.0.1:1/cvmfs/@fqrn@\n")
        os.chown(planted, 65534, 65534)
        planted.chmod(0o666)
        done = pycvmfs("mount", DEMO_FQRN, str(mnt), env=env)
        assert done.returncode == 1 and not is_mounted(mnt)
        assert done.stdout == "" and "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith(f"pycvmfs: error: configuration file {planted} is not trusted")
        assert f"chmod go-w {planted}" in lines[0] and f"chown root {planted}" in lines[0]

        planted.chmod(0o644)  # mode fixed, owner still foreign: still refused
        assert "owned by nobody" in pycvmfs("mount", DEMO_FQRN, str(mnt), env=env).stderr
        assert not is_mounted(mnt)


@pytest.mark.parametrize("_", [pytest.param(None, marks=NEEDS_FUSE_AND_NGINX)])
def test_skipped_lines_are_reported_and_the_mount_goes_on(tmp_path: Path, _: None) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with Nginx() as server:
        root, env = _demo_config(tmp_path, server)
        local = root / "config.d" / f"{DEMO_FQRN}.local"
        local.write_text("# site settings\nCVMFS_X=$(hostname)\nCVMFS_Y='never closed\n")
        with cli_mount(DEMO_FQRN, mnt, env=env) as mount:
            assert (mnt / "README.txt").read_text().endswith("revision 2: updated\n")
        warnings = [line for line in mount.output.splitlines() if "warning" in line]
        assert warnings == [
            f"pycvmfs: warning: {local}:2: command substitution $(...) is not supported; "
            "ignored",
            f"pycvmfs: warning: {local}:3: unterminated single quote; ignored"], mount.output
        assert "Traceback" not in mount.output


@pytest.mark.parametrize("_", [pytest.param(None, marks=NEEDS_FUSE_AND_NGINX)])
def test_a_foreground_mount_reports_skipped_lines_once(tmp_path: Path, _: None) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with Nginx() as server:
        root, env = _demo_config(tmp_path, server)
        local = root / "config.d" / f"{DEMO_FQRN}.local"
        local.write_text("CVMFS_X=`id`\n")
        with (tmp_path / "stderr").open("w+") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "pycvmfs", "mount", DEMO_FQRN, str(mnt), "--foreground"],
                cwd=DEMO_REPO.parents[1], env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=stderr)
            try:
                deadline = time.monotonic() + 60
                while not is_mounted(mnt) and process.poll() is None:
                    assert time.monotonic() < deadline, "the foreground mount never came up"
                    time.sleep(0.05)
                assert is_mounted(mnt), stderr.read()
            finally:
                if is_mounted(mnt):
                    pycvmfs("umount", str(mnt), env=env)
                force_unmount(mnt)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            stderr.seek(0)
            output = stderr.read()
    expected = f"{local}:1: command substitution (backticks) is not supported; ignored"
    assert output.count(expected) == 1, output
    assert "Traceback" not in output


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
