"""What pyproject.toml says only in an experimental table: the KV router's prefix index,
a C extension with no dependencies but Python's headers."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("orchestrator.router._index", ["orchestrator/router/_index.c"])])
