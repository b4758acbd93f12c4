"""cnnbench: a config-driven runner for the textbook convolutional networks."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cnnbench")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
