"""Build glue only: the cffi extension, and libbpf built just before it (see build_ffi.py)."""

import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.sdist import sdist

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_ffi


class BuildExt(build_ext):
    """Builds the pinned libbpf (idempotent) before cffi's extension is compiled."""

    def run(self) -> None:
        build_ffi.build_vendored_libbpf()
        super().run()


class SDist(sdist):
    """Puts the pinned libbpf tarball in the sdist (vendor/libbpf/), so building from it
    needs no download; build_ffi.find_tarball() looks there first."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        tarball = build_ffi.find_tarball()  # sha256-checked; fetched if not there yet
        dest = Path(base_dir) / "vendor" / "libbpf" / tarball.name
        if not dest.exists():
            shutil.copy2(tarball, dest)


setup(
    cffi_modules=["build_ffi.py:ffibuilder"],
    cmdclass={"build_ext": BuildExt, "sdist": SDist},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
