"""What an ingest changed in the working tree and has not published yet (the staging
journal), so that a later ingest neither publishes it by accident nor loses it.

    SCRATCH/unpublished        the journal (JSON): the images staged, the trees created,
                               and for every file or symlink replaced, its saved original
    SCRATCH/staged-originals/  those originals (small files: metadata, origin.json, links)

An ingest (or a removal) that finds a journal refuses to go on unless told what to do
(`StagedPolicy`): RESUME publishes the staged changes with its own, DISCARD puts the
working tree back as the last publish left it (created trees removed, originals restored).
The journal is written before each change it records, so a crash leaves at most a record
of something that did not happen (harmless to undo). A journal from before this module (an
empty file) records nothing to undo: it can be resumed, not discarded.
"""

from __future__ import annotations

import enum
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from pycvmfs.errors import ImageError
from pycvmfs.publisher.kept import is_kept
from pycvmfs.publisher.tree_walk import CATALOG_MARKER

SCRATCH = ".pycvmfs-ingest"  # in the working tree: unfinished images, the lock, the journal
JOURNAL = f"{SCRATCH}/unpublished"
ORIGINALS = f"{SCRATCH}/staged-originals"


class StagedPolicy(enum.Enum):
    """What an ingest does with changes an earlier one staged but did not publish."""

    REFUSE = "refuse"  # stop before any work, naming them and the two ways on
    RESUME = "resume"  # publish them with this ingest's changes
    DISCARD = "discard"  # undo them first


class StagedChangesError(ImageError):
    """The working tree holds changes an earlier ingest staged and did not publish."""


@dataclass(slots=True)
class Staged:
    """The journal's contents."""

    images: list[str] = field(default_factory=list)  # public names, in staging order
    created: list[str] = field(default_factory=list)  # directories that did not exist
    originals: dict[str, str | None] = field(default_factory=dict)  # path -> saved copy
    removed: list[str] = field(default_factory=list)  # public names a removal took out
    known: bool = True  # False: an old empty journal, contents unknown

    def describe(self) -> str:
        if not self.known:
            return "unpublished changes of an earlier ingest (not itemised)"
        parts = [_names(self.images) or ("image trees only" if self.created else "")]
        if self.removed:
            parts.append(f"removal of {_names(self.removed)}")
        return "unpublished changes of an earlier ingest: " + "; ".join(p for p in parts if p)


def _names(names: list[str]) -> str:
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return ", ".join(names[:5]) + more


class StagingJournal:
    """The journal of one working tree; the caller holds the working tree's lock."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.path = work / JOURNAL

    def read(self) -> Staged | None:
        """What is staged, or None when the working tree is as last published."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        if not text.strip():
            return Staged(known=False)
        try:
            data = json.loads(text)
            return Staged(list(data["images"]), list(data["created"]),
                          dict(data["originals"]), list(data.get("removed", [])))
        except (ValueError, KeyError, TypeError):
            return Staged(known=False)

    def settle(self, policy: StagedPolicy, *, fix: str) -> Staged | None:
        """Apply `policy` to what an earlier ingest staged (None: nothing was). `fix` names
        the options that choose a policy, for the refusal."""
        staged = self.read()
        if staged is None or policy is StagedPolicy.RESUME:
            return staged
        if policy is StagedPolicy.REFUSE:
            raise StagedChangesError(f"{self.work} holds {staged.describe()}; nothing was "
                                     f"fetched: {fix}")
        self.discard(staged)
        return staged

    def stage_dirs(self, relative: list[str]) -> None:
        """Before new trees are renamed in: remember those that did not exist."""
        staged = self._current()
        staged.created += [path for path in relative if path not in staged.created
                           and not os.path.lexists(self.work / path)]
        self._write(staged)

    def stage_image(self, name: str, relative: list[str]) -> None:
        """Before image `name`'s files or symlinks at `relative` paths are replaced: save
        each original (once; None when there was none)."""
        staged = self._current()
        if name not in staged.images:
            staged.images.append(name)
        originals = self.work / ORIGINALS
        for path in relative:
            if path in staged.originals:
                continue
            source = self.work / path
            if os.path.islink(source) or source.is_file():
                originals.mkdir(parents=True, exist_ok=True)
                saved = f"{ORIGINALS}/{len(staged.originals)}"
                _copy(source, self.work / saved)
                staged.originals[path] = saved
            else:
                staged.originals[path] = None
        self._write(staged)

    def stage_removal(self, names: list[str]) -> None:
        """Before images are removed from the working tree (not undoable: their trees go)."""
        staged = self._current()
        staged.removed += [name for name in names if name not in staged.removed]
        self._write(staged)

    def discard(self, staged: Staged) -> None:
        """Undo the staged changes: created trees removed, originals put back, directories
        left empty (or holding only a catalog marker) removed."""
        if not staged.known:
            raise StagedChangesError(f"{self.work} holds unpublished changes an older "
                                     "pycvmfs did not itemise: they cannot be discarded, "
                                     "only published (--resume)")
        if staged.removed:
            raise StagedChangesError(f"{self.work} holds the unpublished {staged.describe()}: "
                                     "a removal cannot be undone, only published (--resume)")
        parents: set[Path] = set()
        for path in staged.created:
            target = self.work / path
            if target.is_dir() and not target.is_symlink() and not is_kept(target):
                shutil.rmtree(target)
            parents.add(target.parent)
        for path, saved in staged.originals.items():
            target = self.work / path
            if os.path.lexists(target):
                target.unlink()
            if saved is not None:
                os.replace(self.work / saved, target)
            parents.add(target.parent)
        for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
            _prune(parent, self.work)
        self.clear()

    def clear(self) -> None:
        """The working tree is published (or back as it was): forget the journal."""
        shutil.rmtree(self.work / ORIGINALS, ignore_errors=True)
        self.path.unlink(missing_ok=True)

    def _current(self) -> Staged:
        staged = self.read()
        return Staged() if staged is None else staged

    def _write(self, staged: Staged) -> None:
        if not staged.known:
            return  # an old journal stays as it is: resume is all it allows
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.new")
        temporary.write_text(json.dumps({"images": staged.images, "created": staged.created,
                                         "originals": staged.originals,
                                         "removed": staged.removed}, indent=1))
        os.replace(temporary, self.path)


def _copy(source: Path, target: Path) -> None:
    if target.is_symlink() or target.exists():
        target.unlink()
    if source.is_symlink():
        target.symlink_to(os.readlink(source))
    else:
        shutil.copyfile(source, target)


def _prune(directory: Path, stop: Path) -> None:
    """Remove `directory` and its parents below `stop` while they hold nothing, or only a
    catalog marker (a fan-out directory made for an image that is gone again)."""
    while directory != stop and stop in directory.parents:
        try:
            names = os.listdir(directory)
        except OSError:
            return
        if names == [CATALOG_MARKER]:
            (directory / CATALOG_MARKER).unlink()
        elif names:
            return
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent
