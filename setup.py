"""Build glue only: the cffi extension, and libbpf built just before it (see build_ffi.py)."""

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_ffi  # noqa: E402  (needs the path above)


class BuildExt(build_ext):
    """Builds the pinned libbpf (idempotent) before cffi's extension is compiled."""

    def run(self) -> None:
        build_ffi.build_vendored_libbpf()
        super().run()


setup(
    cffi_modules=["build_ffi.py:ffibuilder"],
    cmdclass={"build_ext": BuildExt},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
