# pycvmfs — the two commands that matter: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEMO_FQRN := demo.pycvmfs.org
DEMO_KEY  := testdata/keys/$(DEMO_FQRN).pub
DEMO_OUT  ?= /tmp/pycvmfs-demo

.PHONY: setup demo lint test test-unit test-integration test-fast test-slow testdata bench bench-client \
	bench-images clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

# Publish the demo tree into a scratch repository, list and read the bundled demo
# repository back through the verifying no-FUSE reader, then serve it over HTTP on
# 127.0.0.1 and mount it with `pycvmfs mount` (skipped where FUSE is not usable).
demo: setup
	rm -rf $(DEMO_OUT)
	$(PY) testdata/build_demo.py --output $(DEMO_OUT)/repo
	@echo "== the bundled demo repository, verified and listed (path type mode size nlink mtime sha1/target xattrs)"
	$(VENV)/bin/pycvmfs ls -lR testdata/repo --keys $(DEMO_KEY)
	@echo "== /README.txt of revision v2 (trunk) and of tag v1"
	$(VENV)/bin/pycvmfs cat testdata/repo /README.txt --keys $(DEMO_KEY)
	$(VENV)/bin/pycvmfs cat testdata/repo /README.txt --keys $(DEMO_KEY) --tag v1
	@echo "== the chunked file"
	$(VENV)/bin/pycvmfs stat testdata/repo /data/random.bin --keys $(DEMO_KEY)
	@echo "== freshly published copy in $(DEMO_OUT)/repo is identical to the bundled one:"
	diff -r testdata/repo $(DEMO_OUT)/repo && echo "identical"
	$(PY) testdata/demo_mount.py --workdir $(DEMO_OUT)

# ruff + mypy, then stale documentation: comments and docstrings that promise later work
# ("next issue", "to come", "not yet") instead of saying what is true now.
lint: setup
	$(VENV)/bin/ruff check pycvmfs tests bench testdata tools
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy tools
	$(PY) tools/check_stale_words.py pycvmfs tests bench testdata

# The unit tier has a contract (tests/unit/conftest.py): no network, no subprocess. It runs
# in a network namespace of its own where `unshare --net` works (root), plainly otherwise, on
# two workers; then every other test, one at a time (they mount, serve and time things).
UNSHARE_NET := $(shell unshare --net true >/dev/null 2>&1 && echo unshare --net --)

test: setup lint test-unit test-integration

test-unit: setup
	$(UNSHARE_NET) $(PY) -m pytest -q -n 2 tests/unit

test-integration: setup
	$(PY) -m pytest -q --durations=15 --ignore=tests/unit

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

test-slow: setup
	$(PY) -m pytest -q -m slow

# Regenerate testdata/repo (reproducible: same bytes every time).
testdata: setup
	$(PY) testdata/build_demo.py

bench: setup
	$(PY) bench/publish.py

# FUSE client vs local disk: walk, sequential and parallel reads, RSS (root, /dev/fuse, nginx;
# about 1.6 GB generated once under /tmp/pycvmfs-bench-client; see bench/client.py --help).
bench-client: setup
	$(PY) bench/client.py

# `pycvmfs run` cold start from the mount vs skopeo copy + umoci unpack + run, and bytes fetched
# vs image size (root, /dev/fuse, nginx, docker-registry, skopeo, umoci, bwrap; setup cached under
# /tmp/pycvmfs-bench-images; see bench/images.py --help).
bench-images: setup
	$(PY) bench/images.py

clean:
	rm -rf $(VENV) .pytest_cache $(DEMO_OUT)
