"""Node checks: FUSE device, fusermount3, user namespaces (`pycvmfs exec`), kernel FUSE
features, libfuse3. Pure: facts in (`gather_node` collects them), `CheckResult`s out."""

from __future__ import annotations

from dataclasses import dataclass

from pycvmfs.doctor.probe import ProbeReport
from pycvmfs.doctor.result import CheckResult, fail, ok, warn
from pycvmfs.fs.userns import SYSCTLS

FUSE_MAJOR, FUSE_MINOR = 10, 229
FUSE_IN_USERNS_KERNEL = (4, 18)  # FS_USERNS_MOUNT for fuse
CHMOD_FIX = "ask the administrator for `chmod 666 /dev/fuse` (HPC nodes ship it 0666)"


@dataclass(frozen=True, slots=True)
class FuseDevice:
    """/dev/fuse as this user sees it."""

    exists: bool
    is_char: bool = False
    major: int = 0
    minor: int = 0
    mode: int = 0
    open_error: str = ""  # "" when it opened read-write


@dataclass(frozen=True, slots=True)
class Helper:
    """fusermount3 on PATH."""

    path: str | None
    setuid_root: bool = False


@dataclass(frozen=True, slots=True)
class Sysctls:
    """The user-namespace switches; None where the kernel has no such file."""

    unprivileged_userns_clone: int | None = None  # Debian, older Ubuntu
    max_user_namespaces: int | None = None
    apparmor_restrict: int | None = None  # kernel.apparmor_restrict_unprivileged_userns

    def by_name(self) -> dict[str, int | None]:
        """The values by their sysctl(8) names, as `fs.userns.SYSCTLS` names them."""
        return {"kernel.unprivileged_userns_clone": self.unprivileged_userns_clone,
                "user.max_user_namespaces": self.max_user_namespaces,
                "kernel.apparmor_restrict_unprivileged_userns": self.apparmor_restrict}

    @classmethod
    def from_names(cls, values: dict[str, int | None]) -> Sysctls:
        return cls(values.get("kernel.unprivileged_userns_clone"),
                   values.get("user.max_user_namespaces"),
                   values.get("kernel.apparmor_restrict_unprivileged_userns"))


@dataclass(frozen=True, slots=True)
class Libfuse:
    """What the lowlevel backend loaded, or why not; which other backends import."""

    release: str = ""  # "3.14.0"; "" when not loaded
    error: str = ""
    fallbacks: tuple[str, ...] = ()  # importable: "pyfuse3", "mfusepy"


@dataclass(frozen=True, slots=True)
class NodeFacts:
    euid: int
    device: FuseDevice
    helper: Helper
    sysctls: Sysctls
    probe: ProbeReport | None  # None: the probe process did not answer
    probe_error: str
    kernel: str  # uname release
    fuse_filesystem: bool  # "fuse" in /proc/filesystems
    libfuse: Libfuse


def check_device(facts: NodeFacts) -> CheckResult:
    name = "/dev/fuse"
    device = facts.device
    if not device.exists:
        return fail(name, "does not exist", "load the fuse kernel module (modprobe fuse), or "
                    "in a container pass the device in (--device /dev/fuse)")
    kind = f"{device.major},{device.minor}"
    if not device.is_char or (device.major, device.minor) != (FUSE_MAJOR, FUSE_MINOR):
        return fail(name, f"not the FUSE character device ({kind}, expected 10,229)",
                    "ask the administrator to recreate it: mknod -m 666 /dev/fuse c 10 229")
    found = f"character device {kind}, mode {device.mode:04o}"
    if device.open_error:
        return fail(name, f"{found}, cannot be opened read-write by uid {facts.euid} "
                    f"({device.open_error})", CHMOD_FIX)
    return ok(name, f"{found}, read-write for uid {facts.euid}")


def check_helper(facts: NodeFacts) -> CheckResult:
    name = "fusermount3"
    helper = facts.helper
    if facts.euid == 0:
        where = helper.path or "not installed"
        return ok(name, f"{where} (root mounts without it)")
    if helper.path is None:
        return fail(name, "not on PATH: ordinary users mount through it",
                    "install the fuse3 package (or use `pycvmfs exec` where user namespaces "
                    "allow FUSE)")
    if not helper.setuid_root:
        return fail(name, f"{helper.path} is not setuid root",
                    f"ask the administrator for `chown root {helper.path}; "
                    f"chmod u+s {helper.path}`")
    return ok(name, f"{helper.path}, setuid root")


def sysctl_fixes(sysctls: Sysctls) -> list[str]:
    """The sysctl settings to ask the administrator for, from what was read (the settings
    and their values are the ones `pycvmfs exec` names, `fs.userns.SYSCTLS`)."""
    read = sysctls.by_name()
    return [f"{sysctl.name}={sysctl.on}" for sysctl in SYSCTLS
            if read[sysctl.name] is not None and str(read[sysctl.name]) == sysctl.off]


def _sysctl_text(sysctls: Sysctls) -> str:
    parts = [f"{key}={value}" for key, value in (
        ("unprivileged_userns_clone", sysctls.unprivileged_userns_clone),
        ("max_user_namespaces", sysctls.max_user_namespaces),
        ("apparmor_restrict_unprivileged_userns", sysctls.apparmor_restrict),
    ) if value is not None]
    return ", ".join(parts) or "no user-namespace sysctls"


def _ask_for(sysctls: Sysctls) -> str:
    fixes = sysctl_fixes(sysctls)
    if fixes:
        return "ask the administrator for `sysctl " + " ".join(fixes) + "`"
    return "ask the administrator to allow unprivileged user namespaces"


def check_namespaces(facts: NodeFacts) -> CheckResult:
    """Whether a user + mount namespace can be made (the probe), explained by the sysctls.
    Only a warning: `pycvmfs mount` does not need them."""
    name = "user namespaces"
    settings = _sysctl_text(facts.sysctls)
    probe = facts.probe
    if probe is None:
        return warn(name, f"{settings}; probe gave no answer ({facts.probe_error})",
                    "run `unshare -rm true` to see the error")
    if probe.unshare:
        return warn(name, f"{settings}; unshare(user+mount) failed: {probe.unshare}",
                    _ask_for(facts.sysctls))
    if probe.uid_map:
        return warn(name, f"{settings}; created, but mapping the user failed: "
                    f"{probe.uid_map}", _ask_for(facts.sysctls))
    return ok(name, f"{settings}; unshare(user+mount) works")


def _kernel_tuple(release: str) -> tuple[int, int] | None:
    parts = release.split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or "0")
    except (IndexError, ValueError):
        return None


def check_exec(facts: NodeFacts) -> CheckResult:
    """`pycvmfs exec`: FUSE mounted inside a user namespace, as the probe tried it."""
    name = "exec"
    probe = facts.probe
    if probe is None or not probe.namespaces:
        return warn(name, "not available: no user namespace (see above)",
                    _ask_for(facts.sysctls) if probe is not None else "see `user namespaces`")
    if probe.fuse_open:
        return warn(name, f"not available: inside a user namespace {probe.fuse_open}",
                    CHMOD_FIX)
    if probe.fuse_mount:
        version = _kernel_tuple(facts.kernel)
        if version is not None and version < FUSE_IN_USERNS_KERNEL:
            fix = "Linux 4.18 or later allows FUSE in user namespaces: ask for a newer kernel"
        else:
            fix = _ask_for(facts.sysctls)
        return warn(name, f"not available: FUSE mount in a user namespace refused "
                    f"({probe.fuse_mount})", fix)
    return ok(name, "available: FUSE mounts inside a user + mount namespace")


def check_kernel(facts: NodeFacts) -> CheckResult:
    name = "kernel"
    found = f"Linux {facts.kernel}"
    if not facts.fuse_filesystem:
        return fail(name, f"{found}, no fuse file system in /proc/filesystems",
                    "load the fuse kernel module (modprobe fuse)")
    probe = facts.probe
    if probe is not None and probe.protocol:
        offers = [feature for feature, on in (("splice", probe.splice),
                                              ("passthrough", probe.passthrough)) if on]
        return ok(name, f"{found}, FUSE protocol {probe.protocol}, offers "
                  f"{', '.join(offers) or 'neither splice nor passthrough'}")
    return ok(name, f"{found}, FUSE protocol unknown (no probe mount)")


def check_libfuse(facts: NodeFacts) -> CheckResult:
    name = "libfuse3"
    lib = facts.libfuse
    if lib.release:
        return ok(name, f"libfuse {lib.release} (backend lowlevel)")
    if lib.fallbacks:
        return warn(name, f"not usable ({lib.error}); backends {', '.join(lib.fallbacks)} "
                    "are used instead", "install libfuse3 3.10 or later (Debian/Ubuntu: "
                    "libfuse3-3 or libfuse3-4; RHEL: fuse3-libs)")
    return fail(name, f"not usable ({lib.error}) and no other FUSE backend imports",
                "install libfuse3 3.10 or later (Debian/Ubuntu: libfuse3-3 or libfuse3-4; "
                "RHEL: fuse3-libs)")


NODE_CHECKS = (check_device, check_helper, check_namespaces, check_exec, check_kernel,
               check_libfuse)


def node_results(facts: NodeFacts) -> list[CheckResult]:
    return [check(facts) for check in NODE_CHECKS]
