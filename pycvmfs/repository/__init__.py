"""One repository as a reader sees it: where objects come from (`source`), why they can be
trusted (`trust`), what the catalogs say (`catalog`, `catalog_tree`) and the composition root
that joins them (`repository.Repository`), used by the CLI today and by the FUSE client next.
"""
