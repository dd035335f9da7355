"""The one packaging setting pyproject.toml cannot say: a package found by ``find`` *plus* one mapped
from another folder. The built-in profiles live in the top-level ``profiles/`` (their one home in
git) and ship as ``mtcolor_batch.profiles`` (``package-dir`` in pyproject.toml)."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["mtcolor_batch*"]), "mtcolor_batch.profiles"])
