"""Add variables (fitted statistics, models) to an existing, complete store."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import xarray as xr
import zarr

from .errors import IncompleteStoreError, InputError, InvalidStoreError
from .guard import output_lock, resolve
from .location import local_path
from .oserrors import user_os_errors
from .store import (
    ATTR,
    _history_entry,
    _now,
    _open_group,
    default_compressors,
    history,
    store_state,
)

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

    Variables of the same name are replaced. Nothing that is there is damaged on the way:
    the new variables are written to a temporary store beside ``path`` and moved in only
    once complete, and the root metadata (one more history entry: ``op``, ``params``,
    ``inputs``, ``device`` and any ``provenance`` keys) is replaced atomically last. A
    failure at any point (a full disk, a kill) leaves the store as it was, still complete;
    the store's write lock is held meanwhile.
    """
    p = local_path(path, "a store")
    real = resolve(p)
    with user_os_errors(p, "saving results into store"), output_lock(real):
        state = store_state(real)
        if state == "incomplete":
            raise IncompleteStoreError(p)
        group = _open_group(real, mode="r")
        clash = [n for n in new.data_vars if str(n) in group and n not in _replaceable(group)]
        if clash:
            raise InputError(
                f"{p} already has data variable(s) {clash} that are not fitted results"
            )
        found = group.attrs.get(ATTR)
        meta: dict[str, Any]
        if not found:  # a foreign store: its first cubepipe history entry
            meta = {"history": []}
        elif isinstance(found, Mapping):
            meta = dict(found)
        else:
            raise InvalidStoreError(f"{p}: {ATTR} is a {type(found).__name__}, not a mapping")
        zarr_format = group.metadata.zarr_format
        entry = _history_entry(op, params, inputs, device, provenance)
        new = new.drop_encoding().compute()
        new.attrs = {}
        # Coordinates already in the store stay as they are (text ones live in its attrs).
        to_write = new.drop_vars(
            [c for c in new.coords if str(c) in group or new[c].dtype.kind in "OUS"]
        )
        token = secrets.token_hex(4)
        stage = real.with_name(f".{real.name}.add-{token}")
        moved: list[tuple[Path, Path | None]] = []  # (moved in, what it replaced)
        try:
            with zarr.config.set({"array.write_empty_chunks": True}):
                # In the store's own format (a zarr v2 group written by another tool
                # gets v2 arrays: one store, one format).
                # v3: cubepipe's codecs (their CRC-32C), not zarr's default (zstd, no sum).
                enc = (
                    {str(n): {"compressors": default_compressors()} for n in to_write.data_vars}
                    if zarr_format == 3
                    else None
                )
                to_write.to_zarr(
                    str(stage), mode="w-", zarr_format=zarr_format, consolidated=False, encoding=enc
                )
            for child in sorted(stage.iterdir()):
                if not any((child / f).is_file() for f in ("zarr.json", ".zarray")):
                    continue
                dst = real / child.name
                aside = None
                if dst.exists():
                    aside = real.with_name(f".{real.name}.old-{child.name}-{token}")
                    os.rename(dst, aside)
                os.rename(child, dst)
                moved.append((dst, aside))
            entry["finished"] = _now()
            meta["history"] = [*history({ATTR: meta}), entry]
            meta["complete"] = True
            root = zarr.open_group(str(real), mode="r+")
            root.attrs[ATTR] = json.loads(json.dumps(meta, default=str))
            with warnings.catch_warnings():
                warnings.filterwarnings(
                    "ignore", message="Consolidated metadata", category=UserWarning
                )
                zarr.consolidate_metadata(str(real))
        except BaseException:
            for dst, aside in reversed(moved):  # put back what was there
                shutil.rmtree(dst, ignore_errors=True)
                if aside is not None:
                    os.rename(aside, dst)
            moved.clear()
            raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)
            for _, aside in moved:
                if aside is not None:
                    shutil.rmtree(aside, ignore_errors=True)
    return p


def _replaceable(group: zarr.Group) -> set[str]:
    return {n for n in group.array_keys() if n.startswith(("stats_", "pca_", "ae_", "vae_"))}
