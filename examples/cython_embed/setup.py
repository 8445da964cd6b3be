"""Build the embedding example in place: python setup.py build_ext --inplace"""
import os

import allones
from Cython.Build import cythonize
from setuptools import Extension, setup

# allones.get_include() is the directory of _core.pxd and _kvm.h: the C compiler needs it
# for "_kvm.h" (the pxd's `cdef extern from`). Cython resolves `allones._core` as a
# package path, so its include path is the directory *above* the package.
include = allones.get_include()

setup(
    name="allones-cython-embed",
    ext_modules=cythonize(
        [Extension("translate", ["translate.pyx"], include_dirs=[include],
                   extra_compile_args=["-O2"])],
        include_path=[os.path.dirname(include)],
        compiler_directives={"language_level": 3},
    ),
)
