"""Filtering of image cubes: convolution (direct or real FFT), masked normalized
convolution and smooth frequency filters, chunked with halos, on CPU or GPU.

:func:`filter_cube` is the entry point; :func:`parse_kernel` and :func:`make_kernel`
turn a spec such as ``gaussian:2`` into kernel arrays.
"""

from .convolve import DIRECT_MAX_COST, choose_method
from .cube import AXES, FILTER_ATTR, METHODS, MODES, filter_cube, filter_dtype
from .frequency import MIN_CUTOFF, butterworth_lowpass, transfer_function
from .kernels import FORMS, Kernel, KernelSpec, Taps, make_kernel, parse_kernel
from .nan_spread import nan_spread, nan_spread_summary

__all__ = [
    "AXES",
    "DIRECT_MAX_COST",
    "FILTER_ATTR",
    "FORMS",
    "METHODS",
    "MIN_CUTOFF",
    "MODES",
    "Kernel",
    "KernelSpec",
    "Taps",
    "butterworth_lowpass",
    "choose_method",
    "filter_cube",
    "filter_dtype",
    "make_kernel",
    "nan_spread",
    "nan_spread_summary",
    "parse_kernel",
    "transfer_function",
]
