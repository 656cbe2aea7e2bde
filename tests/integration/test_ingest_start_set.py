"""Start sets for real: `pycvmfs ingest --start-set` runs commands in the freshly unpacked
Debian+python3 test image (bubblewrap, strace) and publishes a file bundle spec beside the
interpreter; commands that fail only warn. `pycvmfs bundle record` does the same for a
tree on the host."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from pycvmfs.cli.main import main
from pycvmfs.format.bundles import SPEC_PREFIX
from pycvmfs.format.certificates import load_public_key
from pycvmfs.images import layout
from pycvmfs.repository.open import open_repository
from pycvmfs.repository.source import LocalSource
from tests.images import ImageSet, require_images
from tests.publish_helpers import Keys
from tests.registry import NEEDS_REGISTRY_TOOLS

NEEDS_TOOLS = pytest.mark.skipif(not (shutil.which("strace") and shutil.which("bwrap")),
                                 reason="needs strace and bwrap (apt-get install strace "
                                 "bubblewrap)")


@NEEDS_TOOLS
@NEEDS_REGISTRY_TOOLS
@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (device nodes, owners)")
def test_ingest_records_start_sets_and_failing_commands_only_warn(
        tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    images: ImageSet = require_images()
    storage, events = tmp_path / "storage", tmp_path / "events.jsonl"
    name = "example.org/debian:python"
    assert main(["ingest", f"oci:{images.python.layout}:{images.python.tag}", "--as", name,
                 "--repo", keys.fqrn, "--storage", str(storage), "--keys-dir",
                 str(keys.keys_dir), "--work", str(tmp_path / "work"), "--skip-layers",
                 "--notify", str(events), "--start-set-timeout", "20",
                 "--start-set", "python3 -c pass",
                 "--start-set", "python3 -c 'import json'",  # same trigger: merged
                 "--start-set", "false",
                 "--start-set", "no-such-command",
                 "--start-set", "python3 -c 'import urllib.request as u; u.urlopen(\"http://"
                 "127.0.0.1:9\")'"]) == 0  # no network in there: fails, warns
    err = capsys.readouterr().err
    warnings = [event for event in map(json.loads, events.read_text().splitlines())
                if event["action"] == "warning"]
    assert [event["warning"] for event in warnings] == ["start_set"] * 3, warnings
    assert "'false' not recorded: exit status 1" in err
    assert "'no-such-command' not recorded" in err and "urlopen" in err

    flat = "/" + layout.flat_dir(images.python.config_digest)
    trigger = "/usr/bin/python3.11"
    public = load_public_key(keys.public_key_file.read_bytes())
    with open_repository(LocalSource(storage), keys.fqrn, [public]) as repo:
        spec = json.loads(repo.read(f"{flat}/usr/bin/{SPEC_PREFIX}python3.11"))
        listed = spec["dependencies"]
        assert spec["name"] == "CVMFS_BUNDLE" and len(listed) == len(set(listed))
        assert all(path.startswith(flat + "/") and repo.lookup(path).is_regular
                   for path in listed)
        inside = [path.removeprefix(flat) for path in listed]
        assert inside[0] == "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"  # the kernel's
        assert trigger not in inside
        for wanted in ("/etc/ld.so.cache", "/usr/lib/x86_64-linux-gnu/libc.so.6",
                       "/usr/lib/python3.11/encodings/__pycache__/utf_8.cpython-311.pyc",
                       "/usr/lib/python3.11/json/__pycache__/decoder.cpython-311.pyc"):
            assert wanted in inside
        assert inside.index("/usr/lib/x86_64-linux-gnu/libc.so.6") < inside.index(
            "/usr/lib/python3.11/json/__pycache__/decoder.cpython-311.pyc")  # in order
        assert not any(path.startswith(("/proc/", "/dev/", "/sys/", "/tmp/"))
                       for path in inside)
        specs = [path for path, entry in repo.walk(flat) if SPEC_PREFIX in path]
        assert specs == [f"{flat}/usr/bin/{SPEC_PREFIX}python3.11"]


@NEEDS_TOOLS
def test_bundle_record_on_a_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mount, work = tmp_path / "mnt", tmp_path / "work"
    for tree in (mount, work):
        (tree / "sw/bin").mkdir(parents=True)
    (mount / "sw/lib").mkdir()
    cat = shutil.which("cat")
    assert cat is not None
    shutil.copy(cat, mount / "sw/bin/cat")
    (mount / "sw/lib/data").write_text("data\n")
    (mount / "sw/bin/data").symlink_to("../lib/data")
    (mount / "elsewhere").write_text("not under /sw\n")
    command = ["--", str(mount / "sw/bin/cat"), str(mount / "sw/bin/data"),
               str(mount / "elsewhere"), "/etc/hostname"]
    common = ["bundle", "record", "--repo-path", "/sw", "--mount", str(mount)]
    assert main([*common, *command]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["dependencies"] == ["/sw/lib/data"]
    assert "trigger /sw/bin/cat: 1 files" in out.err
    assert main([*common, "--tree", str(work), *command]) == 0
    written = json.loads((work / f"sw/bin/{SPEC_PREFIX}cat").read_bytes())
    assert written["dependencies"] == ["/sw/lib/data"]
    assert main([*common, "--", "false"]) == 1
    assert "'false' not recorded: exit status 1" in capsys.readouterr().err
    assert main([*common, "--timeout", "0.5", "--", "sleep", "20"]) == 1
    assert "still running after 0.5 s" in capsys.readouterr().err
    assert main([*common, "--", "true"]) == 1
    assert "opened no file under" in capsys.readouterr().err
