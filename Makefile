# The front door: every step a newcomer needs, each one or two commands. `make help` lists them.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
ARCH   := $(shell uname -m)
# Debian packages: libbpf's build (libelf, zlib, pkg-config), the BPF test programs (clang),
# the permission tests (capsh), the tests that start bpftool and prometheus/promtool, GNU time
# (the command benchmark's peak RSS).
APT_PACKAGES := make gcc libelf-dev zlib1g-dev pkg-config clang llvm libcap2-bin bpftool prometheus time
# What the checks cover: `make lint` runs ruff check and ruff format --check over them.
LINT_PATHS := libbpf_batch tests build_ffi.py setup.py examples bench

.PHONY: help all deps venv build test demo bench wheels wheel wheel-test sdist sdist-test \
	system-test lint typecheck clean distclean

all: build

help:  ## this list
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z-]*:.*## / {printf "  make %-12s %s\n", $$1, $$2}' \
	    $(MAKEFILE_LIST)

deps:  ## install the Debian packages that are missing (elsewhere: say what to install)
	@if ! command -v apt-get >/dev/null || ! command -v dpkg-query >/dev/null; then \
	    echo "deps: no apt here; install by hand: a C compiler, make, libelf and zlib headers," \
	        "pkg-config, clang and llvm (BPF test programs), capsh, bpftool, prometheus"; \
	    echo "  Fedora: dnf install gcc make elfutils-libelf-devel zlib-devel pkgconf clang llvm" \
	        "libcap bpftool"; \
	    echo "  Alpine: apk add build-base elfutils-dev zlib-dev pkgconf clang llvm libcap bpftool"; \
	    echo "  Arch:   pacman -S base-devel libelf zlib pkgconf clang llvm libcap bpf"; \
	    echo "  and Prometheus (prometheus, promtool) for the export tests"; \
	    exit 0; \
	fi; \
	missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	    | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing: $$missing"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
	        install -y -q $$missing; \
	fi

# The venv holds the build requirements and the `dev` dependency group (pyproject.toml): the
# test suite's imports, ruff, mypy, build and the wheel toolchain, each listed once there.
$(VENV)/.ready: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U "pip>=25.1" "setuptools>=77" wheel "cffi>=1.15"
	$(PIP) install -q --group dev
	touch $@

venv: $(VENV)/.ready  ## the virtualenv in .venv/, with every tool the targets below use

build: deps venv  ## fetch and build the pinned libbpf, then the extension, in place
	$(PIP) install -q --no-build-isolation -e .

test: build  ## the whole test suite, on the real kernel
	$(PY) -m pytest

demo: build  ## a 1,000,000-entry hash map drained batch by batch and per key
	$(PY) -m libbpf_batch.demo

bench: build  ## the benchmark (bench/), with its JSON report in bench-results.json
	$(PY) -m bench --json bench-results.json

wheels: venv  ## manylinux2014 abi3 wheels, x86_64 and aarch64, built with zig cc, in dist/
	rm -f dist/libbpf_batch-*.whl
	mkdir -p build; for c in libbpf elfutils zlib; do vendor/fetch.sh $$c build >/dev/null 2>build/fetch.log \
	    || { cat build/fetch.log >&2; exit 1; }; done
	@# Both architectures' libraries at once (configure runs serially), then the two wheels.
	PYTHON=$(PY) vendor/manylinux.sh libs x86_64 & x=$$!; \
	PYTHON=$(PY) vendor/manylinux.sh libs aarch64 & a=$$!; \
	wait $$x; rx=$$?; wait $$a; ra=$$?; [ $$rx = 0 ] && [ $$ra = 0 ]
	PYTHON=$(PY) vendor/manylinux.sh wheel x86_64 dist
	PYTHON=$(PY) vendor/manylinux.sh wheel aarch64 dist

wheel: wheels

wheel-test: wheels  ## the suite against the x86_64 wheel (3.9, 3.12, 3.13), aarch64 under qemu
	.ci/wheel-test dist/libbpf_batch-*-manylinux*_$(ARCH).whl
	.ci/aarch64-smoke dist/libbpf_batch-*-manylinux*_aarch64.whl

sdist: venv  ## the source tarball, carrying the pinned libbpf, elfutils and zlib: builds offline
	rm -f dist/*.tar.gz
	$(PY) -m build --sdist --no-isolation --outdir dist

sdist-test: sdist  ## build a wheel from the unpacked sdist with apt-get and fetch.sh unusable
	.ci/sdist-test

system-test: deps  ## build against Debian's libbpf-dev instead of the pin; core tests on it
	.ci/system-test

lint: venv  ## ruff check and ruff format --check
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

typecheck: venv  ## mypy --strict over the package (needs only the _libbpf.pyi stub, no build)
	$(VENV)/bin/mypy --strict libbpf_batch

clean:  ## remove what the build made, keeping the venv and the downloaded sources
	rm -rf build/src build/libbpf build/manylinux build/lib.* build/temp.* build/bdist.* dist \
	    *.egg-info libbpf_batch/_libbpf.c libbpf_batch/*.so libbpf_batch/*.o .pytest_cache

distclean: clean  ## also the venv and every download
	rm -rf build $(VENV)
