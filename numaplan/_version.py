"""numaplan's version, written once: the package, the plan files and the wheel's metadata
(``pyproject.toml`` reads it through ``[tool.setuptools.dynamic]``) all take it from here."""

__version__ = "0.1.0"
