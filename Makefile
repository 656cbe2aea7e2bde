# pycvmfs — the two commands that matter: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEMO_FQRN := demo.pycvmfs.org
DEMO_KEY  := testdata/keys/$(DEMO_FQRN).pub
DEMO_OUT  ?= /tmp/pycvmfs-demo

.PHONY: setup setup-demo system-packages demo lint test test-unit test-integration test-fast \
	test-slow testdata man grpc-stubs bench bench-client bench-images bench-replication clean

# pycvmfs and its dependencies, all wheels: no compiler and no FUSE headers. A mount loads
# libfuse3.so through ctypes when it is there (package fuse3).
$(VENV)/.installed-demo: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	    echo "make: pycvmfs needs Python 3.11 or newer; $(PYTHON) is $$($(PYTHON) -V 2>&1)" \
	         "(choose another: make PYTHON=python3.12 ...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

# Then the test and lint tools (wheels only).
$(VENV)/.installed: $(VENV)/.installed-demo
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

setup-demo: $(VENV)/.installed-demo

# pyfuse3 (the `fast` extra) compiles against libfuse3: headers, pkg-config, a C compiler and
# Python's headers (`make system-packages` installs or lists them). Tried at every setup until
# it builds; without it the pyfuse3 backend's tests are skipped and everything else runs.
setup: $(VENV)/.installed
	@$(PY) -c 'import pyfuse3' 2>/dev/null || \
	    $(PY) -m pip install --quiet -e '.[fast]' >$(VENV)/pyfuse3-build.log 2>&1 || \
	    echo "make: pyfuse3 could not be built ($(VENV)/pyfuse3-build.log says why; it needs" \
	         "the packages \`make system-packages\` lists); its tests are skipped"

# What the test suite uses from the system, one entry per package:
# PROBE:DEBIAN-PACKAGE:RHEL-PACKAGE, PROBE a command (also looked for in /usr/sbin) or an
# absolute file, `-` where the distribution has no such package. nginx: real Stratum-1s;
# squid: site proxies; attr: getfattr; fuse3: fusermount3 and libfuse3.so for mounts;
# libfuse3-dev, pkg-config, gcc, Python headers: building pyfuse3; docker-registry, skopeo,
# umoci: real container images (RHEL: no docker-registry command, those tests skip);
# debootstrap: the test images; bubblewrap: running images unprivileged; apache2-utils:
# htpasswd for registry auth; strace: start sets recorded at ingest; containerd and runc:
# the snapshotter's tests (its API comes from Debian packages through `make grpc-stubs`);
# podman: the additional image store's tests.
PY_INCLUDE := $(shell $(PYTHON) -c "import sysconfig; print(sysconfig.get_path('include'))" \
	2>/dev/null)
PY_VERSION := $(shell $(PYTHON) -c "import sys; print('%d.%d' % sys.version_info[:2])" 2>/dev/null)
SYSTEM_PACKAGES := \
	nginx:nginx:nginx \
	squid:squid:squid \
	getfattr:attr:attr \
	fusermount3:fuse3:fuse3 \
	/usr/include/fuse3/fuse_lowlevel.h:libfuse3-dev:fuse3-devel \
	pkg-config:pkg-config:pkgconf-pkg-config \
	gcc:gcc:gcc \
	$(PY_INCLUDE)/Python.h:python$(PY_VERSION)-dev:python$(PY_VERSION)-devel \
	docker-registry:docker-registry:- \
	skopeo:skopeo:skopeo \
	umoci:umoci:umoci \
	debootstrap:debootstrap:debootstrap \
	bwrap:bubblewrap:bubblewrap \
	htpasswd:apache2-utils:httpd-tools \
	strace:strace:strace \
	containerd:containerd:containerd \
	runc:runc:runc \
	podman:podman:podman

# Installs the missing ones as root where apt-get is; elsewhere prints them, one apt and one
# dnf line, and goes on (tests that need a missing tool are skipped; pyfuse3 cannot be built
# without its four).
system-packages:
	@apt=; dnf=; \
	for entry in $(SYSTEM_PACKAGES); do \
	    probe=$${entry%%:*}; rest=$${entry#*:}; deb=$${rest%%:*}; rpm=$${rest#*:}; \
	    case $$probe in \
	        /*) test -e "$$probe" ;; \
	        *) command -v "$$probe" >/dev/null 2>&1 || test -x "/usr/sbin/$$probe" ;; \
	    esac && continue; \
	    apt="$$apt $$deb"; test "$$rpm" = - || dnf="$$dnf $$rpm"; \
	done; \
	if test -z "$$apt"; then \
	    echo "== system packages: every one the tests use is installed"; \
	elif test "$$(id -u)" = 0 && command -v apt-get >/dev/null 2>&1; then \
	    echo "== installing system packages:$$apt"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && \
	    apt-get install -y -qq --no-install-recommends $$apt >/dev/null; \
	else \
	    echo "== missing system packages (tests that need them are skipped; pyfuse3, in" \
	         "make setup, builds only with libfuse3's headers, pkg-config, gcc and Python's):"; \
	    echo "   Debian/Ubuntu:            sudo apt-get install$$apt"; \
	    if test -n "$$dnf"; then echo "   RHEL/Alma (EPEL enabled): sudo dnf install$$dnf"; fi; \
	fi

# Publish the demo tree into a scratch repository, list and read the bundled demo
# repository back through the verifying no-FUSE reader, then serve it over HTTP on
# 127.0.0.1 and mount it with `pycvmfs mount` (skipped, saying why, where FUSE is not usable).
demo: setup-demo
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

# Compiled modules are cached under the venv even where the environment sets
# PYTHONDONTWRITEBYTECODE: without them every pytest worker and every `python -m pycvmfs` a
# test starts compiles the package and re-rewrites the test modules again (collection alone
# went from 7 s to under 2).
unexport PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX := $(abspath $(VENV))/pycache

# The unit tier has a contract (tests/unit/conftest.py): no network, no subprocess. It runs
# in a network namespace of its own where `unshare --net` works (root), plainly otherwise, on
# two workers; then every other test on two workers too (most of their time is spent waiting
# on servers, mounts and containers), tests that must not overlap kept on one worker by
# modules and shared groups (tests/xdist_groups.py), and the few that must run alone (marked
# serial, tests/integration/conftest.py) after them.
UNSHARE_NET := $(shell unshare --net true >/dev/null 2>&1 && echo unshare --net --)

test: system-packages setup lint test-unit test-integration

test-unit: setup grpc-stubs
	$(UNSHARE_NET) $(PY) -m pytest -q -n 2 tests/unit

test-integration: setup grpc-stubs
	$(PY) -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder --durations=15 \
	    --ignore=tests/unit -m "not serial"
	$(PY) -m pytest -q --ignore=tests/unit -m serial

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

test-slow: setup
	$(PY) -m pytest -q -m slow

# containerd's snapshots API for `pycvmfs snapshotter` (pycvmfs/snapshotter/api.py): a
# descriptor set compiled by grpcio-tools from containerd's own .proto files, taken from
# Debian's golang-github-containerd-containerd-dev and golang-github-gogo-protobuf-dev
# (installed, or fetched with apt-get download); never committed (.gitignore). Where that
# fails, one line says why and the snapshotter's tests are skipped.
grpc-stubs: setup
	@$(PY) tools/grpc_stubs.py || true

# Regenerate the manual pages (pycvmfs/man/*.1) from the CLI after a command changes;
# tests/unit/cli/test_man_pages.py fails while they are stale.
man: setup
	$(PY) tools/man_pages.py

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

# Publishing into SeaweedFS (S3) vs into a local directory, same tree, same run (root not
# needed; `weed` from the test extra; see bench/replication.py --help).
bench-replication: setup
	$(PY) bench/replication.py

clean:
	rm -rf $(VENV) .pytest_cache $(DEMO_OUT)
