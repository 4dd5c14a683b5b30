"""Builds the Cython twins in ftsip/_fast/ (every *.pyx there is one extension module)."""
import glob
import os

from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError:  # a build without Cython: the pure-Python twins are used
    cythonize = None

ext_modules = []
if cythonize is not None and not os.environ.get("FTSIP_NO_CYTHON"):
    sources = sorted(glob.glob(os.path.join("ftsip", "_fast", "*.pyx")))
    exts = [
        Extension("ftsip._fast." + os.path.splitext(os.path.basename(src))[0], [src],
                  extra_compile_args=["-O2"])
        for src in sources
    ]
    ext_modules = cythonize(
        exts,
        language_level=3,
        compiler_directives={"freethreading_compatible": True, "boundscheck": False,
                             "wraparound": False, "cdivision": True},
        quiet=True,
    )

setup(ext_modules=ext_modules)
