"""Map the project's top-level folders into the ``distillq`` namespace.

The design card fixes the folders at the top of the repository (app/, tasks/, workers/, core/,
storage/); installed, they are ``distillq.app`` and so on, so nothing of ours lands in
site-packages under a generic name. Subpackages are found, not listed. Everything else about
the package is in pyproject.toml.
"""

from setuptools import find_packages, setup

FOLDERS = ("app", "tasks", "workers", "core", "storage")

setup(
    package_dir={"distillq": "distillq", **{f"distillq.{f}": f for f in FOLDERS}},
    packages=[
        "distillq",
        *(f"distillq.{p}" for p in find_packages(include=[f"{f}*" for f in FOLDERS])),
    ],
)
