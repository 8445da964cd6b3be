"""Build the Cython core. ALLONES_DEBUG=1 turns bounds checks back on (a debug build)."""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("ALLONES_DEBUG") == "1"

# Set once for the whole project (STYLE.md): no bounds checks or negative indexing in
# kernels, C division. Python-facing code checks its inputs before entering them.
directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": False,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}

extensions = [
    Extension(
        f"allones.{name}",
        [f"allones/{name}.pyx"],
        include_dirs=["allones"],
        extra_compile_args=["-O3"] if not DEBUG else ["-O0", "-g"],
    )
    for name in ("_core", "_mmu")
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives, annotate=False))
