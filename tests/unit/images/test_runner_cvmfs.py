"""`pycvmfs run --cvmfs`: the repositories bound read-only at /cvmfs/<fqrn> in the container."""

from __future__ import annotations

from pathlib import Path

from pycvmfs.images.runner import ApptainerRunner, BwrapRunner, RunRequest, cvmfs_repositories


def _image(root: Path, *, cvmfs: bool = True) -> Path:
    for name in ("proc", "dev", "tmp", *(["cvmfs"] if cvmfs else [])):
        (root / name).mkdir(parents=True)
    return root


def _request(root: Path) -> RunRequest:
    return RunRequest.for_image(root, ["ls", "/cvmfs"], cvmfs={
        "b.example.org": Path("/cvmfs/b.example.org"), "a.example.org": Path("/mnt/a")})


def test_bwrap_binds_each_repository_on_a_tmpfs(tmp_path: Path) -> None:
    argv = list(BwrapRunner("/usr/bin/bwrap", new_session=False)
                .invocation(_request(_image(tmp_path))).argv)
    at = argv.index("--tmpfs", argv.index("/tmp"))
    assert argv[at:at + 8] == ["--tmpfs", "/cvmfs",
                               "--ro-bind", "/mnt/a", "/cvmfs/a.example.org",
                               "--ro-bind", "/cvmfs/b.example.org", "/cvmfs/b.example.org"]
    assert argv.index("--ro-bind") < at < argv.index("--")


def test_bwrap_makes_cvmfs_when_the_image_has_none(tmp_path: Path) -> None:
    root = _image(tmp_path, cvmfs=False)
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    argv = list(BwrapRunner("/usr/bin/bwrap", new_session=False)
                .invocation(_request(root)).argv)
    assert argv[1:3] == ["--tmpfs", "/"]
    assert ["--symlink", "usr/bin", "/bin"] == argv[3:6]
    assert ["--ro-bind", str(root / "usr"), "/usr"] == argv[argv.index("/usr") - 2:
                                                            argv.index("/usr") + 1]
    assert argv.index("--dir") < argv.index("/cvmfs/a.example.org")
    assert argv[argv.index("--remount-ro"):argv.index("--remount-ro") + 2] == [
        "--remount-ro", "/"]
    assert argv.index("--remount-ro") > argv.index("/cvmfs/b.example.org")


def test_without_cvmfs_nothing_changes(tmp_path: Path) -> None:
    argv = BwrapRunner("/usr/bin/bwrap", new_session=False).invocation(
        RunRequest.for_image(_image(tmp_path), ["true"])).argv
    assert "/cvmfs" not in " ".join(argv)


def test_apptainer_binds_read_only(tmp_path: Path) -> None:
    argv = list(ApptainerRunner("/usr/bin/apptainer").invocation(
        _request(_image(tmp_path))).argv)
    assert ["--bind", "/mnt/a:/cvmfs/a.example.org:ro"] == argv[4:6]
    assert "/cvmfs/b.example.org:/cvmfs/b.example.org:ro" in argv


def test_repositories_mounted_at_cvmfs_come_along() -> None:
    table = ["/", "/cvmfs/a.example.org", "/cvmfs/.hidden", "/cvmfs/x/y", "/home"]
    assert cvmfs_repositories("img.example.org", Path("/mnt/img"), table) == {
        "a.example.org": Path("/cvmfs/a.example.org"), "img.example.org": Path("/mnt/img")}
