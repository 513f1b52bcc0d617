"""Primer: the phi-1 recipe as a system you can run.

The core library: config, storage URIs, the dataset shard format, executors and the CLI.
It imports none of the components (``services``, ``model``, ``operators``); they plug into
the CLI through the ``primer.commands`` entry-point group.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("primer")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
