"""`pycvmfs exec` composes with containers: inside it, `pycvmfs run --cvmfs` runs an image
from /cvmfs/<fqrn> with bubblewrap (the repository is found mounted there and reused) and
binds the repository at /cvmfs/<fqrn> in the container, where the image's public name
(a symlink into `.flat/`) resolves. As an ordinary user, as in test_exec."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ingested import IngestedImages
from tests.integration.test_client_unprivileged import (
    SYSTEM_PYTHON,
    USER,
    missing_requirement,
    user_env,
)
from tests.integration.test_exec import RUN_TIMEOUT_S
from tests.mounting import User, fuse_open_to_all_users, mountinfo
from tests.publish_helpers import Keys
from tests.registry import NEEDS_REGISTRY_TOOLS, needs_tools
from tests.servers import NEEDS_FUSE_AND_NGINX, Nginx, shared_scratch

pytestmark = [*NEEDS_FUSE_AND_NGINX, NEEDS_REGISTRY_TOOLS, needs_tools("bwrap"),
              pytest.mark.skipif(os.path.exists("/cvmfs"), reason="the host has /cvmfs"),
              pytest.mark.slow]


@pytest.fixture
def fuse_open_to_all() -> Iterator[None]:
    """/dev/fuse open to every user for the test (`fuse_open_to_all_users`)."""
    with fuse_open_to_all_users():
        yield


@pytest.mark.usefixtures("fuse_open_to_all")
def test_run_with_cvmfs_inside_exec(keys: Keys, ingested_images: IngestedImages) -> None:
    reason = missing_requirement()
    if reason is not None:
        pytest.skip(reason)
    entry = pwd.getpwnam(USER)
    user = User(USER, entry.pw_uid, entry.pw_gid)
    fqrn, image = keys.fqrn, ingested_images.name("python")
    with shared_scratch("pycvmfs-exec-images-") as base, Nginx() as server:
        home = base / "home"
        home.mkdir()
        os.chown(home, user.uid, user.gid)
        key = base / f"{fqrn}.pub"
        shutil.copy(keys.public_key_file, key)
        key.chmod(0o644)
        url = server.publish(f"cvmfs/{fqrn}", ingested_images.storage)
        options = (f"CVMFS_SERVER_URL={url},CVMFS_HTTP_PROXY=DIRECT,"
                   f"CVMFS_PUBLIC_KEY={key}")
        env = user_env(user, home, base / "no-etc")
        inner = (f"{SYSTEM_PYTHON} -m pycvmfs run -o {options} --mount /cvmfs/{fqrn} "
                 f"--runner bwrap --cvmfs {fqrn}/{image} -- /bin/sh -c "
                 f"'ls /cvmfs; cat /cvmfs/{fqrn}/{image}/etc/debian_version; exit 4'")
        done = subprocess.run([*user.prefix, SYSTEM_PYTHON, "-m", "pycvmfs", "exec",
                               "-o", options, fqrn, "--", "/bin/sh", "-c", inner],
                              env=env, cwd=home, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=RUN_TIMEOUT_S)
        if done.returncode != 4 and "user namespace" in done.stderr.lower():
            pytest.skip(f"bubblewrap cannot run nested here: {done.stderr.strip()}")
        assert done.returncode == 4, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0] == fqrn  # the container's /cvmfs holds the repository
        assert lines[1].startswith("12")  # through the image's public name
        assert not any(point.startswith(str(home)) for point in mountinfo())
        assert not Path("/cvmfs").exists()
