"""The container-image side of pycvmfs: image references, a registry API v2 client, and
local image sources (OCI layouts, `docker save` archives) that DUCC-style ingestion reads.

`reference` is pure; `registry` talks HTTP(S) to one registry; `archives` reads local files.
"""
