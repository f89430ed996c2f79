"""cubepipe.pipeline: what is computed.

Device backends (CPU/GPU), statistics, standardization, compression, filtering and the
command line. Functions take and return xarray objects backed by dask arrays; stores are
opened and written only through :mod:`cubepipe.storage`.
"""

from cubepipe.storage import __version__

from .backend import Device, array_namespace, resolve_device, to_device, to_host
from .synthetic import make_cube

__all__ = [
    "Device",
    "__version__",
    "array_namespace",
    "make_cube",
    "resolve_device",
    "to_device",
    "to_host",
]
