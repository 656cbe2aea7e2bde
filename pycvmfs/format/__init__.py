"""Pure CernVM-FS formats: bytes in, values out. No files, sockets, sqlite3 or threads."""
