"""Compression over ``band``: the public API, PCA and its chunk kernels, per-pixel
autoencoders.
"""

from cubepipe.pipeline.compression.api import (
    METHODS,
    Compressed,
    compress,
    load_model,
    prepare_compress,
    reconstruct,
)

__all__ = [
    "Compressed",
    "METHODS",
    "compress",
    "load_model",
    "prepare_compress",
    "reconstruct",
]
