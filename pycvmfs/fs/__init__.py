"""What a repository looks like as a filesystem: a backend-neutral core and thin adapters."""
