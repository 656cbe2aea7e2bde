"""Publisher: turn a directory tree into signed CernVM-FS repository revisions."""
