"""File bundle specifications (CernVM-FS 2.14): a `.cvmfsbundle-<name>` JSON document
beside its trigger file `<name>` lists the repository paths to prefetch when the trigger
is opened."""

from __future__ import annotations

import json
from collections.abc import Sequence

SPEC_PREFIX = ".cvmfsbundle-"


def render_spec(dependencies: Sequence[str]) -> bytes:
    """The spec document listing `dependencies` in order, duplicates dropped."""
    document = {"name": "CVMFS_BUNDLE", "version": "1.0.0", "encoding": "UTF-8",
                "dependencies": list(dict.fromkeys(dependencies))}
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
