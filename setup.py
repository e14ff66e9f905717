"""Builds the Cython extensions (the hot path fastvfs.ring._ring, the file system's C face
fastvfs.fs._tables and system-call helpers fastvfs.fs._sys) and the cffi binding of liburing (fastvfs.uring._liburing, needs
liburing-dev).  Set FASTVFS_DEBUG=1 for assertions and line tracing.

FASTVFS_HARNESS=1 also builds the C load driver of the test and bench harness
(fastvfs_testing._lean), which is not part of the distribution: ``make build`` builds it in
place for tests/ and bench/."""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("FASTVFS_DEBUG") == "1"
compile_args = ["-O2", "-g"] if not debug else ["-O0", "-g"]
directives = {"language_level": 3, "linetrace": debug}

extensions = [
    Extension("fastvfs.ring._ring", ["fastvfs/ring/_ring.pyx"], extra_compile_args=compile_args,
              libraries=["uring"]),
    Extension("fastvfs.fs._tables", ["fastvfs/fs/_tables.pyx"], extra_compile_args=compile_args),
    Extension("fastvfs.fs._sys", ["fastvfs/fs/_sys.pyx"], extra_compile_args=compile_args,
              define_macros=[("_GNU_SOURCE", "1")]),
]
if os.environ.get("FASTVFS_HARNESS") == "1":
    extensions.append(Extension("fastvfs_testing._lean", ["fastvfs_testing/_lean.pyx"],
                                extra_compile_args=compile_args))

setup(ext_modules=cythonize(extensions, compiler_directives=directives,
                            annotate=os.environ.get("FASTVFS_ANNOTATE") == "1"),
      cffi_modules=["fastvfs/uring/_build.py:ffibuilder"])
