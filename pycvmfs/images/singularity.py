"""Apptainer/Singularity metadata for a flat image root filesystem (fact sheet section 14).

A flat image in the DUCC layout is a plain root filesystem that `apptainer exec DIR` runs as a
"sandbox" image. What makes it behave like the container image it came from is the metadata
Singularity's docker conversion writes into it, and DUCC writes the same:

    .singularity.d/
      actions/{exec,run,shell,start,test}   sourced env scripts, then the action
      env/01-base.sh                        (header only)
      env/10-docker2singularity.sh          the image config's Env, exported
      env/90-environment.sh                 user hook (empty); /environment points here
      env/99-base.sh                        LD_LIBRARY_PATH += /.singularity.d/libs, PS1
      libs/                                 where Apptainer binds host GPU libraries
      runscript                             Entrypoint + Cmd, "$@" replacing Cmd
      startscript                           (empty)
      labels.json                           the image config's Labels
    environment -> .singularity.d/env/90-environment.sh
    singularity -> .singularity.d/runscript
    .exec .run .shell .test -> .singularity.d/actions/...   (Singularity 2 entry points)
    dev/ proc/ sys/ tmp/ var/tmp/ root/ home/ etc/          mount points, if missing
    etc/hosts etc/resolv.conf                               empty bind targets, if missing

The script contents below are written from the behaviour of Singularity's OCI conversion and
DUCC (`ducc/singularity/`), not copied:

- Env: `export NAME="${NAME:-"value"}"`, i.e. a value already set in the environment wins (as
  with `apptainer exec` without `--cleanenv`), except PATH, which the image sets outright.
  Values are escaped for double quotes (\\ " ` $), so spaces, quotes, `$` and newlines
  survive verbatim. Names that are not shell identifiers cannot be exported from sh; they are
  left out, with a comment, and returned by `env_script_skipped`.
- runscript: the OCI rule (Entrypoint followed by the arguments, the arguments defaulting to
  Cmd) with positional parameters, never `eval`, so arguments reach the program unchanged.
  This is Apptainer's `APPTAINER_NO_EVAL` behaviour; classic Singularity additionally
  re-evaluates arguments through the shell, a quirk we do not reproduce. `OCI_ENTRYPOINT` and
  `OCI_CMD` are still assigned, as in Singularity's runscript, for tools that read them.

Apart from `write_singularity_files`, which creates files, this module is pure.

Caveats:
- Existing files in the image are never modified: DUCC truncates /etc/hosts and
  /etc/resolv.conf, we only create them when missing, so the flat tree equals `umoci unpack`
  plus the paths `write_singularity_files` returns.
- WorkingDir is not part of Singularity's metadata (Apptainer ignores it); the runner takes it
  from the `ImageConfig`.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import overload

SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
SING_DIR = ".singularity.d"
ENV_DOCKER_SCRIPT = f"{SING_DIR}/env/10-docker2singularity.sh"
ENV_USER_SCRIPT = f"{SING_DIR}/env/90-environment.sh"
RUNSCRIPT = f"{SING_DIR}/runscript"
EXEC_ACTION = f"{SING_DIR}/actions/exec"
NO_RUNSCRIPT_MESSAGE = "There is no runscript defined for this container"


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """The parts of an OCI image config (`config` object) that running an image needs."""

    env: tuple[str, ...] = ()           # "NAME=value" (or a bare "NAME")
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    working_dir: str = ""                # "" means /
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)

    @classmethod
    def from_oci(cls, blob: Mapping[str, object]) -> ImageConfig:
        """From a parsed image config blob (`{"config": {...}, "rootfs": ...}`) or its
        `config` object alone. Missing or null fields are empty, as in the OCI spec."""
        whole_blob = any(key in blob for key in ("config", "rootfs", "architecture"))
        inner = blob.get("config") if whole_blob else blob
        if inner is None:
            return cls()
        if not isinstance(inner, Mapping):
            raise ValueError("image config: 'config' is not an object")
        labels = inner.get("Labels") or {}
        working_dir = inner.get("WorkingDir") or ""
        if not isinstance(labels, Mapping) or not isinstance(working_dir, str):
            raise ValueError("image config: Labels must be an object, WorkingDir a string")
        return cls(env=_strings(inner, "Env"), entrypoint=_strings(inner, "Entrypoint"),
                   cmd=_strings(inner, "Cmd"), working_dir=working_dir,
                   labels={str(key): str(value) for key, value in labels.items()})

    @property
    def cwd(self) -> str:
        """The working directory a process in the image starts in (default /)."""
        return self.working_dir or "/"


def _strings(config: Mapping[str, object], key: str) -> tuple[str, ...]:
    value = config.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"image config: {key} must be a list of strings")
    return tuple(value)


# --- pure renderers ---------------------------------------------------------------------------


def double_quote_escape(value: str) -> str:
    """Escape for the inside of a double-quoted sh word: \\ " ` $ lose their meaning."""
    return (value.replace("\\", "\\\\").replace('"', '\\"')
            .replace("`", "\\`").replace("$", "\\$"))


def single_quote(value: str) -> str:
    """A single-quoted sh word with exactly this value."""
    return "'" + value.replace("'", "'\\''") + "'"


def args_quoted(args: Sequence[str]) -> str:
    """Singularity's display form of an argument list: each item double-quoted, space-joined."""
    return " ".join(f'"{double_quote_escape(arg)}"' for arg in args)


def env_script_skipped(env: Iterable[str]) -> list[str]:
    """The Env entries `env_script` leaves out (names sh cannot export)."""
    return [item for item in env if not SHELL_NAME.match(item.split("=", 1)[0])]


def env_script(env: Iterable[str]) -> str:
    """Contents of `10-docker2singularity.sh` for an image config's Env list."""
    lines = ["#!/bin/sh", "# Generated by pycvmfs from the image config's Env."]
    for item in env:
        name, has_value, value = item.partition("=")
        if not SHELL_NAME.match(name):
            lines.append(f"# skipped (not a shell variable name): {_comment_safe(name)}")
        elif not has_value:
            lines.append(f'export {name}="${{{name}:-}}"')
        elif name == "PATH":
            lines.append(f'export PATH="{double_quote_escape(value)}"')
        else:
            lines.append(f'export {name}="${{{name}:-"{double_quote_escape(value)}"}}"')
    return "\n".join(lines) + "\n"


def _comment_safe(text: str) -> str:
    return text.replace("\n", "\\n").replace("\r", "\\r")


def runscript(entrypoint: Sequence[str], cmd: Sequence[str]) -> str:
    """Contents of `.singularity.d/runscript`: exec Entrypoint + ("$@" or Cmd).

    The four cases: Entrypoint only -> Entrypoint "$@"; Cmd only -> "$@" if given, else Cmd;
    both -> Entrypoint followed by "$@" if given, else by Cmd; neither -> "$@" if given, else a
    message and exit status 1.
    """
    lines = ["#!/bin/sh",
             "# Generated by pycvmfs from the image config's Entrypoint and Cmd (OCI rules:",
             "# the arguments replace Cmd; Entrypoint always runs first). No eval: arguments",
             "# reach the program unchanged.",
             f"OCI_ENTRYPOINT={single_quote(args_quoted(entrypoint))}",
             f"OCI_CMD={single_quote(args_quoted(cmd))}"]
    if cmd:
        lines += ['if [ "$#" -eq 0 ]; then',
                  f"    set -- {_words(cmd)}",
                  "fi"]
    elif not entrypoint:
        lines += ['if [ "$#" -eq 0 ]; then',
                  f"    echo {single_quote(NO_RUNSCRIPT_MESSAGE)} >&2",
                  "    exit 1",
                  "fi"]
    if entrypoint:
        lines.append(f'set -- {_words(entrypoint)} "$@"')
    lines.append('exec "$@"')
    return "\n".join(lines) + "\n"


def _words(args: Sequence[str]) -> str:
    return " ".join(single_quote(arg) for arg in args)


def labels_json(labels: Mapping[str, str]) -> str:
    return json.dumps(dict(labels), indent="\t", sort_keys=True) + "\n"


_SOURCE_ENV = """\
for script in /.singularity.d/env/*.sh; do
    if [ -f "$script" ]; then
        . "$script"
    fi
done
"""

ACTIONS: dict[str, str] = {
    "exec": "#!/bin/sh\n" + _SOURCE_ENV + 'exec "$@"\n',
    "run": "#!/bin/sh\n" + _SOURCE_ENV + """\
if [ -x /.singularity.d/runscript ]; then
    exec /.singularity.d/runscript "$@"
fi
echo "No runscript found in the container, executing /bin/sh" >&2
exec /bin/sh "$@"
""",
    "shell": "#!/bin/sh\n" + _SOURCE_ENV + """\
if [ -n "${SINGULARITY_SHELL:-}" ] && [ -x "$SINGULARITY_SHELL" ]; then
    exec "$SINGULARITY_SHELL" "$@"
elif [ -x /bin/bash ]; then
    SHELL=/bin/bash
    PS1="Singularity> "
    export SHELL PS1
    exec /bin/bash --norc "$@"
elif [ -x /bin/sh ]; then
    SHELL=/bin/sh
    export SHELL
    exec /bin/sh "$@"
fi
echo "ERROR: no shell in the container" >&2
exit 1
""",
    "start": "#!/bin/sh\n" + """\
# An instance start: tell the instance's PID 1 to continue (as Singularity does).
kill -CONT 1
""" + _SOURCE_ENV + """\
if [ -x /.singularity.d/startscript ]; then
    exec /.singularity.d/startscript
fi
""",
    "test": "#!/bin/sh\n" + _SOURCE_ENV + """\
if [ -x /.singularity.d/test ]; then
    exec /.singularity.d/test "$@"
fi
echo "No test found in the container, executing /bin/sh -c true" >&2
exec /bin/sh -c true
""",
}

ENV_SCRIPTS_FIXED: dict[str, str] = {
    "01-base.sh": "#!/bin/sh\n# Base environment (empty, as in Singularity images).\n",
    "90-environment.sh": "#!/bin/sh\n# Custom environment shell code should follow\n",
    "99-base.sh": """\
#!/bin/sh
if [ -z "${LD_LIBRARY_PATH:-}" ]; then
    LD_LIBRARY_PATH="/.singularity.d/libs"
else
    LD_LIBRARY_PATH="$LD_LIBRARY_PATH:/.singularity.d/libs"
fi
PS1="Singularity> "
export LD_LIBRARY_PATH PS1
""",
}

MOUNT_POINTS = ("dev", "proc", "sys", "tmp", "var/tmp", "root", "home", "etc")
BIND_TARGETS = ("etc/hosts", "etc/resolv.conf")
SYMLINKS: dict[str, str] = {
    "singularity": RUNSCRIPT,
    "environment": ENV_USER_SCRIPT,
    ".exec": f"{SING_DIR}/actions/exec",
    ".run": f"{SING_DIR}/actions/run",
    ".shell": f"{SING_DIR}/actions/shell",
    ".test": f"{SING_DIR}/actions/test",
}


def singularity_files(config: ImageConfig) -> dict[str, tuple[str, int]]:
    """Every generated file: relative path -> (contents, mode). Pure."""
    files: dict[str, tuple[str, int]] = {
        f"{SING_DIR}/actions/{name}": (text, 0o755) for name, text in ACTIONS.items()}
    files.update({f"{SING_DIR}/env/{name}": (text, 0o755)
                  for name, text in ENV_SCRIPTS_FIXED.items()})
    files[ENV_DOCKER_SCRIPT] = (env_script(config.env), 0o755)
    files[RUNSCRIPT] = (runscript(config.entrypoint, config.cmd), 0o755)
    files[f"{SING_DIR}/startscript"] = ("#!/bin/sh\n", 0o755)
    files[f"{SING_DIR}/labels.json"] = (labels_json(config.labels), 0o644)
    return files


# --- the one writer ---------------------------------------------------------------------------


def write_singularity_files(root: Path, config: ImageConfig) -> list[str]:
    """Write the metadata into the flat tree at `root`; returns the relative paths created.

    Generated files are (re)written by creating a temporary file and renaming it over the
    target, so a tree whose files are hard links into a shared copy is never modified through
    them. Mount points, bind targets and symlinks are only added when missing. A path inside
    the image that would have to be replaced (e.g. `.singularity.d` being a symlink) raises
    `ValueError`: writing through it could land outside the tree.
    """
    created: list[str] = []
    for relative in MOUNT_POINTS:            # best effort: skipped below a symlink
        target = _inside(root, relative, strict=False)
        if target is not None and not os.path.lexists(target):
            target.mkdir(mode=0o755, parents=True)
            os.chmod(target, 0o1777 if relative in ("tmp", "var/tmp") else 0o755)
            created.append(relative)
    for relative in BIND_TARGETS:
        target = _inside(root, relative, strict=False)
        if target is not None and not os.path.lexists(target):
            target.touch(mode=0o644)
            os.chmod(target, 0o644)
            created.append(relative)
    for relative in (SING_DIR, f"{SING_DIR}/actions", f"{SING_DIR}/env", f"{SING_DIR}/libs"):
        target = _inside(root, relative)
        if not os.path.lexists(target):
            target.mkdir(mode=0o755)
            os.chmod(target, 0o755)
            created.append(relative)
        elif target.is_symlink() or not target.is_dir():
            raise ValueError(f"{target} exists and is not a directory")
    for relative, (text, mode) in singularity_files(config).items():
        _replace(_inside(root, relative), text, mode)
        created.append(relative)
    for relative, link_target in SYMLINKS.items():
        link = _inside(root, relative)
        if not os.path.lexists(link):
            os.symlink(link_target, link)
            created.append(relative)
    return created


@overload
def _inside(root: Path, relative: str) -> Path: ...
@overload
def _inside(root: Path, relative: str, *, strict: bool) -> Path | None: ...
def _inside(root: Path, relative: str, *, strict: bool = True) -> Path | None:
    """root/relative, refusing a path below a symlink (outside the image it may point anywhere
    on the host): ValueError if `strict`, else None."""
    parent = root
    for part in Path(relative).parts[:-1]:
        parent = parent / part
        if parent.is_symlink():
            if strict:
                raise ValueError(f"{parent} is a symlink; refusing to write below it")
            return None
    return root / relative


def _replace(path: Path, text: str, mode: int) -> None:
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise ValueError(f"{path} exists and is not a regular file")
    fd, temporary = tempfile.mkstemp(prefix=".pycvmfs-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        if os.path.lexists(temporary):
            os.unlink(temporary)
        raise
