"""mlferry: ferry a model from an MLflow Model Registry into production.

Two ways: a batch job that scores files or what-if tables, and a model service
(MLServer with its MLflow runtime). Both take one pinned registry version.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mlferry")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
