"""Build glue only: the cffi extension, and libbpf built just before it (see build_ffi.py)."""

import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.sdist import sdist

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_ffi

# Every source a wheel carries compiled in; the sdist carries them all (see NOTICE).
BUNDLED = ("libbpf", "elfutils", "zlib")


class BuildExt(build_ext):
    """Builds the pinned libbpf (idempotent) before cffi's extension is compiled."""

    def run(self) -> None:
        build_ffi.build_vendored_libbpf()
        super().run()


class SDist(sdist):
    """Puts the pinned, sha256-checked source tarballs in the sdist (vendor/<component>/), under
    their pinned names, so building from it needs no download and anyone can rebuild and relink
    the bundled libraries; build_ffi.find_tarball() and vendor/fetch.sh look there first."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        for component in BUNDLED:
            vendor = build_ffi.VENDOR.parent / component
            _, _, name = build_ffi.read_pin(vendor)
            if component == "libbpf":
                tarball = build_ffi.find_tarball()  # honours LIBBPF_TARBALL, whatever its name
            else:
                tarball = Path(fetch(component))
            dest = Path(base_dir) / "vendor" / component / name
            if not dest.exists():
                shutil.copy2(tarball, dest)


def fetch(component: str) -> str:
    """vendor/fetch.sh COMPONENT: the checked tarball's path (downloaded into build/ if needed)."""
    script = build_ffi.VENDOR.parent / "fetch.sh"
    out = subprocess.run(
        ["bash", str(script), component, str(build_ffi.BUILD)],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    return out.strip().splitlines()[-1]


setup(
    cffi_modules=["build_ffi.py:ffibuilder"],
    cmdclass={"build_ext": BuildExt, "sdist": SDist},
    # abi3: one wheel for CPython 3.9 and later; free-threaded CPython has no stable ABI yet.
    options={} if build_ffi.FREE_THREADED else {"bdist_wheel": {"py_limited_api": "cp39"}},
)
