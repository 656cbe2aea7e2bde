"""What the webhook service is configured with: one value shared by the service, its worker
and its HTTP front, so each takes the settings it reads from the same place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from pycvmfs.images.ingest import IngestOptions
from pycvmfs.images.webhook_http import HttpLimits
from pycvmfs.images.webhook_registries import RegistryAllowlist

__all__ = ["WebhookOptions"]


@dataclass(frozen=True, slots=True)
class WebhookOptions:
    ingest: IngestOptions  # the repository; its `publish.source` is the working tree
    token: str
    queue_file: Path
    registries: RegistryAllowlist = dataclasses.field(default_factory=RegistryAllowlist)
    retry_seconds: float = 5.0  # before the first retry; doubled for each further one
    max_retry_seconds: float = 300.0
    max_attempts: int = 5
    http: HttpLimits = dataclasses.field(default_factory=HttpLimits)
