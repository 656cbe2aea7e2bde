"""Apptainer/Singularity metadata that needs no shell: the env script's shape, the image
config and labels, and the writer on a small tree in tmp_path (the scripts are run with the
system's shells in tests/integration/test_singularity_scripts.py)."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from pycvmfs.images.singularity import (
    ImageConfig,
    env_script,
    labels_json,
    runscript,
    write_singularity_files,
)


def test_env_script_shape() -> None:
    script = env_script(["PATH=/usr/bin", "FOO=bar"])
    assert script.splitlines()[0] == "#!/bin/sh"
    assert 'export PATH="/usr/bin"' in script
    assert 'export FOO="${FOO:-"bar"}"' in script


# --- config and labels -------------------------------------------------------------------------


def test_config_from_whole_blob_and_inner_object() -> None:
    inner = {"Env": ["A=1"], "Entrypoint": ["/ep"], "Cmd": ["c"], "WorkingDir": "/w",
             "Labels": {"k": "v"}}
    whole = ImageConfig.from_oci({"architecture": "amd64", "config": inner,
                                  "rootfs": {"type": "layers", "diff_ids": []}})
    assert whole == ImageConfig.from_oci(inner)
    assert whole == ImageConfig(("A=1",), ("/ep",), ("c",), "/w", {"k": "v"})
    assert whole.cwd == "/w"


def test_config_nulls_and_missing_fields_are_empty() -> None:
    config = ImageConfig.from_oci({"config": {"Env": None, "Cmd": None, "Labels": None,
                                              "WorkingDir": ""}, "rootfs": {}})
    assert config == ImageConfig()
    assert config.cwd == "/"
    assert ImageConfig.from_oci({"architecture": "amd64", "rootfs": {}}) == ImageConfig()


def test_config_rejects_wrong_types() -> None:
    with pytest.raises(ValueError, match="Cmd"):
        ImageConfig.from_oci({"config": {"Cmd": "/bin/sh"}})


def test_labels_json_round_trips() -> None:
    labels = {"b": "2", "a": 'quote " and \n newline'}
    assert json.loads(labels_json(labels)) == labels


# --- the writer ---------------------------------------------------------------------------------


def make_tree(root: Path) -> None:
    for directory in ("bin", "etc", "proc", "dev", "tmp"):
        (root / directory).mkdir(parents=True)
    (root / "etc" / "hosts").write_text("127.0.0.1 image\n")


def test_writer_layout(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root)
    config = ImageConfig(env=("FOO=bar",), cmd=("/bin/sh",), labels={"k": "v"})
    created = write_singularity_files(root, config)
    sing = root / ".singularity.d"
    for action in ("exec", "run", "shell", "start", "test"):
        assert stat.S_IMODE((sing / "actions" / action).stat().st_mode) == 0o755
        assert (sing / "actions" / action).read_text().startswith("#!/bin/sh\n")
    assert "export FOO=" in (sing / "env" / "10-docker2singularity.sh").read_text()
    assert (sing / "runscript").read_text() == runscript((), ("/bin/sh",))
    assert json.loads((sing / "labels.json").read_text()) == {"k": "v"}
    assert (sing / "libs").is_dir()
    assert os.readlink(root / "singularity") == ".singularity.d/runscript"
    assert os.readlink(root / "environment") == ".singularity.d/env/90-environment.sh"
    assert os.readlink(root / ".exec") == ".singularity.d/actions/exec"
    # the image's own /etc/hosts is kept; a missing resolv.conf becomes an empty bind target
    assert (root / "etc" / "hosts").read_text() == "127.0.0.1 image\n"
    assert (root / "etc" / "resolv.conf").read_text() == ""
    assert stat.S_IMODE((root / "var" / "tmp").stat().st_mode) == 0o1777
    assert "etc/hosts" not in created and "etc/resolv.conf" in created
    assert {".singularity.d/runscript", "singularity", "var/tmp"} <= set(created)
    on_disk = {str(p.relative_to(root)) for p in root.rglob("*")}
    assert set(created) <= on_disk


def test_writer_is_idempotent_and_replaces_instead_of_writing_through_links(
        tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root)
    write_singularity_files(root, ImageConfig(env=("FOO=old",)))
    shared = tmp_path / "copy"
    shutil.copytree(root, shared, symlinks=True, copy_function=os.link)  # a hard-link copy
    created = write_singularity_files(shared, ImageConfig(env=("FOO=new",)))
    script = ".singularity.d/env/10-docker2singularity.sh"
    assert "old" in (root / script).read_text()          # the original is untouched
    assert "new" in (shared / script).read_text()
    assert "singularity" not in created                  # symlinks already there


def test_writer_refuses_a_symlinked_metadata_dir(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / ".singularity.d").symlink_to(outside)
    with pytest.raises(ValueError, match="symlink|not a directory"):
        write_singularity_files(root, ImageConfig())
    assert list(outside.iterdir()) == []
