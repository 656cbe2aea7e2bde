"""`pycvmfs report dedup` on the two real Debian images ingested from a real registry:
file-level dedup beats layer-level dedup (issue 4), one row per image, a PNG with the
charts; and `pycvmfs gc` on that repository keeps both images readable."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from pycvmfs.cli.gc_report import gc_command, report_group
from pycvmfs.format.certificates import load_public_key
from pycvmfs.images import layout
from pycvmfs.images.report import dedup_report
from pycvmfs.repository.open import open_repository
from pycvmfs.repository.source import LocalSource
from tests.ingested import IngestedImages
from tests.publish_helpers import Keys
from tests.registry import NEEDS_REGISTRY_TOOLS

pytestmark = [NEEDS_REGISTRY_TOOLS, pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (device nodes, owners)")]


def test_dedup_report_of_two_debian_images(ingested_images: IngestedImages, tmp_path: Path,
                                           keys: Keys) -> None:
    images = ingested_images.images  # two revisions: the first only has `base`
    storage = ingested_images.copy_storage(tmp_path / "storage")  # gc changes it below
    names = [ingested_images.name(tag) for tag in ("base", "python")]

    public = load_public_key(keys.public_key_file.read_bytes())
    with open_repository(LocalSource(storage), keys.fqrn, [public]) as repo:
        report = dedup_report(repo, storage)
    assert [image.name for image, _level in report.images] == names
    base, python = (level for _image, level in report.images)
    total = report.total
    assert report.images[0][0].flat == "/" + layout.flat_dir(images.base.config_digest)
    assert total.layers == 2 and base.layers == 1 and python.layers == 2  # one shared
    assert total.layer_stored < report.no_dedup_layer_stored
    # the claim: file-level dedup beats layer-level dedup
    assert total.file_stored < total.layer_stored
    assert total.chunk_stored <= total.file_stored
    assert total.file_logical < total.logical  # the images share most files
    assert min(python.logical, base.logical) > 50_000_000 and python.files > base.files > 3000

    runner = CliRunner()
    common = ["--storage", str(storage), "--repo", keys.fqrn, "--keys-dir", str(keys.keys_dir)]
    read_only = ["--storage", str(storage), "--repo", keys.fqrn,
                 "--keys", str(keys.public_key_file)]  # the public key, as `ls` takes it
    shown = runner.invoke(report_group, ["dedup", *read_only])
    assert shown.exit_code == 0, shown.output
    for name in names:
        assert name in shown.output
    assert "file-level" in shown.output and "layer-level" in shown.output
    print(shown.output)  # the figures, for the record (pytest -s)
    # the older spelling, --keys-dir, still works
    figures = json.loads(runner.invoke(report_group, ["dedup", *common, "--json"]).output)
    assert figures["total"]["file_stored"] == total.file_stored

    # gc of the image repository: the first revision's catalogs go, both images still read
    swept = runner.invoke(gc_command, [*common, "--no-tags"])
    assert swept.exit_code == 0, swept.output
    print(swept.output)
    with open_repository(LocalSource(storage), keys.fqrn, [public]) as repo:
        assert dedup_report(repo, storage).total == total
        for path, entry in repo.walk():
            if entry.is_regular:
                repo.read(path)

    swept_objects = int(swept.output.split(" objects (")[0].rsplit(" in ", 1)[1])
    assert swept_objects > 0  # at least the first revision's root catalog and history

    png = tmp_path / "dedup.png"
    charted = runner.invoke(report_group, ["dedup", *common, "--png", str(png)])
    if importlib.util.find_spec("matplotlib") is None:  # the optional extra is missing
        assert "pycvmfs[report]" in str(charted.exception)
        pytest.skip("matplotlib not installed: the PNG part is not checked")
    assert charted.exit_code == 0, charted.output
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) > 5000
