"""Fixtures shared by integration test modules: expensive setups made once per session."""

from tests.ingested import ingested_images

__all__ = ["ingested_images"]
