"""Build the Cython hot path (relay/_fastparse.pyx) unless RELAY_NO_EXTENSIONS=1."""

import os

from setuptools import Extension, setup

ext_modules = []
if os.environ.get("RELAY_NO_EXTENSIONS") != "1":
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [Extension("relay._fastparse", ["relay/_fastparse.pyx"], extra_compile_args=["-O3"])],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
        },
    )

setup(ext_modules=ext_modules)
