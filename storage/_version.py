"""The installed version of cubepipe (read from the distribution's metadata)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cubepipe")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
