"""Facts of a node where everything works, for the doctor's unit tests to vary."""

from __future__ import annotations

from pycvmfs.doctor.node import FuseDevice, Helper, Libfuse, NodeFacts, Sysctls
from pycvmfs.doctor.probe import ProbeReport

WORKING_PROBE = ProbeReport(unshare="", uid_map="", fuse_open="", fuse_mount="",
                            protocol="7.45", splice=True, passthrough=True)
GOOD = NodeFacts(
    euid=1000,
    device=FuseDevice(True, True, 10, 229, 0o666),
    helper=Helper("/usr/bin/fusermount3", setuid_root=True),
    sysctls=Sysctls(max_user_namespaces=15000),
    probe=WORKING_PROBE,
    probe_error="",
    kernel="6.8.0-31-generic",
    fuse_filesystem=True,
    libfuse=Libfuse(release="3.14.0", fallbacks=("pyfuse3",)),
)
