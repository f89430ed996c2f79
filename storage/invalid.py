"""Pixels marked invalid by their values: the ``mask`` from a rule.

A rule (:class:`InvalidRule`) names values that mean "no data" (``0`` for the black
outside of a non-rectangular image) and a range outside which values are not trusted.
The rule is applied per pixel: a pixel -- every band at one position -- is invalid where
**any** of its bands equals one of ``values``, is strictly below ``below`` or strictly
above ``above``. The store's ``mask`` (True = valid) has the cube's dims without
``band`` (DESIGN: invalid pixels), so per-band invalidity cannot be stored there; a
single invalid value within a pixel is NaN (left out by statistics, standardization and
PCA; by ``filter`` with ``--mask-nan``).

:func:`mask_invalid` adds the rule to a Dataset lazily: the new ``mask`` is the old one
(if any) AND the rule, so a rule only ever removes pixels; the data are kept as they are
(the mask, not NaN, says which are invalid). Values are compared as the cube holds them
(decoded floats), so a lossy encoding may have moved a value off the one given.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from .errors import InputError

__all__ = ["RULE_ATTR", "InvalidRule", "invalid_rule", "mask_invalid", "require_valid"]

#: Attr of the ``mask`` variable listing the rules applied to it (JSON-ready dicts).
RULE_ATTR = "cubepipe_invalid"


@dataclass(frozen=True)
class InvalidRule:
    """Values marking a pixel invalid where any band holds them (see the module notes).

    ``values``: exact values (``==``); ``below``/``above``: strict thresholds. NaN is
    refused (it equals nothing and compares false; NaN values are invalid already), and
    so is ``below > above``, which leaves no value valid.
    """

    values: tuple[float, ...] = ()
    below: float | None = None
    above: float | None = None

    def __post_init__(self) -> None:
        if not self.values and self.below is None and self.above is None:
            raise InputError("an invalid-value rule needs values, below or above")
        named: list[tuple[str, float | None]] = [("--invalid-value", v) for v in self.values]
        named += [("--invalid-below", self.below), ("--invalid-above", self.above)]
        for option, value in named:
            if value is not None and math.isnan(value):
                raise InputError(
                    f"{option} nan: NaN equals no value and compares false, so it marks "
                    "nothing; NaN values are invalid already (statistics, standardize and "
                    "compress leave them out; filter does with --mask-nan). Drop the option"
                )
        if self.below is not None and self.above is not None and self.below > self.above:
            raise InputError(
                f"--invalid-below {self.below:g} and --invalid-above {self.above:g} leave no "
                f"value valid (values below {self.below:g} or above {self.above:g} are every "
                f"value); the valid range is [below, above], so give below <= above"
            )

    def describe(self) -> str:
        """``any band == 0 or < 10 or > 250``: the rule in words."""
        parts = [f"== {v:g}" for v in self.values]
        parts += [f"< {self.below:g}"] if self.below is not None else []
        parts += [f"> {self.above:g}"] if self.above is not None else []
        return "any band " + " or ".join(parts)

    def to_json(self) -> dict[str, Any]:
        """The rule as recorded in a store's history and its ``mask`` attrs."""
        return {
            "values": [float(v) for v in self.values],
            "below": self.below,
            "above": self.above,
            "rule": f"a pixel is invalid where {self.describe()}",
        }


def invalid_rule(
    values: Iterable[float] = (), below: float | None = None, above: float | None = None
) -> InvalidRule | None:
    """The rule of ``--invalid-value`` (repeatable), ``--invalid-below`` and
    ``--invalid-above``, checked; None when none was given."""
    vals = tuple(float(v) for v in values)
    if not vals and below is None and above is None:
        return None
    return InvalidRule(
        tuple(dict.fromkeys(vals)),
        None if below is None else float(below),
        None if above is None else float(above),
    )


def _valid_block(block: Any, *, rule: InvalidRule, axis: int) -> Any:
    """True where no band of the pixel matches ``rule`` (NumPy or CuPy block)."""
    tests = [block == v for v in rule.values]
    tests += [block < rule.below] if rule.below is not None else []
    tests += [block > rule.above] if rule.above is not None else []
    bad = tests[0]  # a rule names at least one test (invalid_rule returns None otherwise)
    for t in tests[1:]:
        bad |= t
    return ~bad.any(axis=axis)


def mask_invalid(ds: xr.Dataset, rule: InvalidRule | None, *, variable: str = "cube") -> xr.Dataset:
    """``ds`` with ``mask`` False (also) where any band of ``ds[variable]`` matches ``rule``.

    Lazy: nothing is read until the result is computed. The ``mask`` gets the cube's dims
    without ``band``; an existing ``mask`` is combined with AND (broadcast over leading
    dims it lacks) and its attrs kept, with the rule appended to attr ``cubepipe_invalid``.
    ``rule=None`` returns ``ds`` unchanged.
    """
    if rule is None:
        return ds
    if variable not in ds or "band" not in ds[variable].dims:
        raise InputError(f"invalid values need a variable {variable!r} with a 'band' dim")
    cube = ds[variable]
    data = cube.data if isinstance(cube.data, da.Array) else da.asarray(cube.data)
    axis = cube.get_axis_num("band")
    dims = tuple(d for d in cube.dims if d != "band")
    valid = da.map_blocks(
        _valid_block,
        data.rechunk({axis: -1}),
        rule=rule,
        axis=axis,
        drop_axis=axis,
        dtype=bool,
        meta=data._meta.astype(bool).sum(axis=axis).astype(bool),
        token="cubepipe-invalid-mask",
    )
    new = xr.Variable(dims, valid)
    attrs: dict[str, Any] = {}
    if "mask" in ds:
        old = ds["mask"]
        attrs = dict(old.attrs)
        new = (old.astype(bool).variable & new).transpose(*dims)
    attrs[RULE_ATTR] = [*attrs.get(RULE_ATTR, []), rule.to_json()]
    out = ds.copy()
    out["mask"] = (dims, new.data, attrs)
    return out


def require_valid(ds: xr.Dataset, rule: InvalidRule, *, source: str = "the input") -> None:
    """Raise :class:`InputError` if ``ds["mask"]`` (after :func:`mask_invalid`) is False
    everywhere.

    Reads the mask's chunks in order, in batches of 1, 2, 4, ... chunks, and stops at the
    first batch holding a valid pixel: usually the first chunk (a band-whole chunk of the
    input); every chunk only when the rule does mask every pixel.
    """
    mask = ds["mask"].data
    mask = mask if isinstance(mask, da.Array) else da.asarray(mask)
    blocks = list(np.ndindex(*mask.numblocks))
    start, size = 0, 1
    while start < len(blocks):
        batch = [mask.blocks[i].any() for i in blocks[start : start + size]]
        if any(bool(v) for v in dask.compute(*batch)):
            return
        start, size = start + size, size * 2
    raise InputError(
        f"every pixel of {source} is invalid under --invalid-* ({rule.describe()}), so "
        "nothing is left to compute; check the values against the data's range "
        "(`cubepipe stats` or `cubepipe info`)"
    )
