"""A small OCI image as a registry serves it (config, one layer, its manifest), shared by the
registry client's unit tests and its tests against a loopback fake."""

from __future__ import annotations

import hashlib
import json

from pycvmfs.images.manifest import OCI_MANIFEST


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


CONFIG = json.dumps({"architecture": "amd64", "os": "linux",
                     "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/w"},
                     "rootfs": {"type": "layers", "diff_ids": [sha(b"layer")]}}).encode()
LAYER = b"layer-bytes" * 100


def manifest_bytes(media_type: str = OCI_MANIFEST, layer_type: str | None = None) -> bytes:
    layer_type = layer_type or "application/vnd.oci.image.layer.v1.tar+gzip"
    config_type = "application/vnd.oci.image.config.v1+json" if media_type == OCI_MANIFEST \
        else "application/vnd.docker.container.image.v1+json"
    return json.dumps({
        "schemaVersion": 2, "mediaType": media_type,
        "config": {"mediaType": config_type, "size": len(CONFIG), "digest": sha(CONFIG)},
        "layers": [{"mediaType": layer_type, "size": len(LAYER), "digest": sha(LAYER)}],
    }).encode()


MANIFEST = manifest_bytes()
