"""pycvmfs: a CernVM-FS client and publisher in Python."""

__version__ = "0.1.0"
