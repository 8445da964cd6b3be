"""Build the Cython core.

Build switches (environment variables, read at build time):
  ALLONES_DEBUG=1     -O0 -g, for gdb.
  ALLONES_SANITIZE=1  -fsanitize=address,undefined: every memory error or undefined
                      behaviour in the core aborts the process. Python itself is not
                      instrumented, so load the runtime first: see tools/memcheck.
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("ALLONES_DEBUG") == "1"
SANITIZE = os.environ.get("ALLONES_SANITIZE") == "1"

# Bounds and initialisation checks stay on: they guard the Python-facing functions, which
# index memoryviews only to take their first element's address after checking the shape.
# The nogil kernels walk raw C pointers, where no check applies; each proves its indices
# in its docstring (a count it was given, or a binary search's result). No negative
# indexing and C division everywhere (STYLE.md).
directives = {
    "language_level": 3,
    "boundscheck": True,
    "wraparound": False,
    "initializedcheck": True,
    "cdivision": True,
    "embedsignature": True,
}

compile_args = ["-O0", "-g"] if DEBUG else ["-O3"]
link_args = []
if SANITIZE:
    # -fno-sanitize-recover: undefined behaviour aborts (a test fails), not just prints.
    sanitizers = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                  "-fno-omit-frame-pointer"]
    compile_args = ["-O1", "-g"] + sanitizers
    link_args = sanitizers

extensions = [
    Extension(
        f"allones.{name}",
        [f"allones/{name}.pyx"],
        include_dirs=["allones"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
    for name in ("_core", "_mmu")
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives, annotate=False))
