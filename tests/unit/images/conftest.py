"""The host sentinel fixtures of the apply_layers tests (tests/layer_tars.py)."""

from tests.layer_tars import host, root, untouched

__all__ = ["host", "root", "untouched"]
