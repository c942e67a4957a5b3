"""The native ring core, built when the package installs and a C compiler is there.

`optional=True`: a failed build (no compiler, no headers) is a warning, not a failed
install; `mybus_actors.ringcore` then runs the pure-Python `ring` and says so.
Everything else about the package is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "mybus_actors._ringcore",
            ["mybus_actors/_ringcore.c"],
            extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ]
)
