# pycvmfs — the two commands that matter: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEMO_FQRN := demo.pycvmfs.org
DEMO_KEY  := testdata/keys/$(DEMO_FQRN).pub
DEMO_OUT  ?= /tmp/pycvmfs-demo

.PHONY: setup demo lint test test-fast test-slow testdata bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

# Publish the demo tree into a scratch repository, then list and read the bundled
# demo repository (and the fresh one) back through the verifying no-FUSE reader.
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

lint: setup
	$(VENV)/bin/ruff check pycvmfs tests bench testdata
	$(VENV)/bin/mypy

test: setup lint
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

test-slow: setup
	$(PY) -m pytest -q -m slow

# Regenerate testdata/repo (reproducible: same bytes every time).
testdata: setup
	$(PY) testdata/build_demo.py

bench: setup
	$(PY) bench/publish.py

clean:
	rm -rf $(VENV) .pytest_cache $(DEMO_OUT)
