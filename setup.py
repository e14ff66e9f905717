"""Builds the Cython extensions (the hot path fastvfs._ring, the file system's system-call
helpers fastvfs.fs._sys) and the cffi binding of liburing (fastvfs.uring._liburing, needs
liburing-dev).  Set FASTVFS_DEBUG=1 for assertions and line tracing."""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("FASTVFS_DEBUG") == "1"
compile_args = ["-O2", "-g"] if not debug else ["-O0", "-g"]
directives = {"language_level": 3, "linetrace": debug}

extensions = [
    Extension("fastvfs._ring", ["fastvfs/_ring.pyx"], extra_compile_args=compile_args,
              libraries=["uring"]),
    Extension("fastvfs.testing._lean", ["fastvfs/testing/_lean.pyx"],
              extra_compile_args=compile_args),
    Extension("fastvfs.fs._sys", ["fastvfs/fs/_sys.pyx"], extra_compile_args=compile_args,
              define_macros=[("_GNU_SOURCE", "1")]),
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives,
                            annotate=os.environ.get("FASTVFS_ANNOTATE") == "1"),
      cffi_modules=["fastvfs/uring/_build.py:ffibuilder"])
