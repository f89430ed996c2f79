"""Add variables (fitted statistics, models) to an existing, complete store."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import xarray as xr
import zarr

from .errors import IncompleteStoreError, InputError
from .store import ATTR, _history_entry, _now, _open_group, store_state

__all__ = ["add_variables"]


def add_variables(
    path: str | Path,
    new: xr.Dataset,
    *,
    op: str,
    params: Mapping[str, Any] | None = None,
    inputs: Iterable[Any] = (),
    device: str = "cpu",
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write the (small, computed) variables of ``new`` into the store at ``path``.

    Variables of the same name are replaced. The store is marked incomplete while this
    runs and complete again, with one more history entry (``op``, ``params``, ``inputs``,
    ``device`` and any ``provenance`` keys), when it is done; so a crash mid-way leaves a
    store that says so.
    """
    p = Path(path)
    state = store_state(p)
    if state == "incomplete":
        raise IncompleteStoreError(p)
    group = _open_group(p, mode="r+")
    meta = dict(group.attrs.get(ATTR) or {"history": []})
    clash = [n for n in new.data_vars if n in group and n not in _replaceable(group)]
    if clash:
        raise InputError(f"{p} already has data variable(s) {clash} that are not fitted results")
    meta["complete"] = False
    entry = _history_entry(op, params, inputs, device, provenance)
    meta["history"] = list(meta.get("history", [])) + [entry]
    group.attrs[ATTR] = meta
    new = new.drop_encoding().compute()
    new.attrs = {}
    keep_coords = [c for c in new.coords if c not in group]
    to_write = new.drop_vars([c for c in new.coords if c not in keep_coords])
    to_write.to_zarr(str(p), mode="a", zarr_format=3, consolidated=False)
    group = zarr.open_group(str(p), mode="r+")
    entry["finished"] = _now()
    meta["complete"] = True
    group.attrs[ATTR] = json.loads(json.dumps(meta, default=str))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(str(p))
    return p


def _replaceable(group: zarr.Group) -> set[str]:
    return {n for n in group.array_keys() if n.startswith(("stats_", "pca_", "ae_", "vae_"))}
