"""Open and write cube stores: zarr v3 groups that plain xarray/zarr can read.

The writer streams chunk by chunk through dask, records provenance and marks the store
complete only after its last chunk is on disk; readers refuse incomplete stores unless
told otherwise. See DESIGN.md, "The cube store contract".
"""

from __future__ import annotations

import contextlib
import copy
import functools
import glob
import hashlib
import json
import os
import secrets
import shutil
import warnings
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr
from dask.array.core import getter
from zarr.codecs import BloscCodec, Crc32cCodec

from ._version import __version__
from .chunkio import ChunkLayout, DirectChunkArray, KeptChunks, direct_layout
from .errors import (
    CubepipeError,
    IncompleteStoreError,
    InputError,
    InvalidStoreError,
    NonFiniteError,
    StoreExistsError,
    StoreNotFoundError,
)
from .guard import check_disjoint, output_lock, resolve
from .layout import default_chunks, shard_shape
from .location import is_remote, local_path, remote_store
from .oserrors import as_user_error, user_os_errors
from .remote import remote_fs, remote_lock, zarr_store

__all__ = [
    "ATTR",
    "claim_output",
    "default_compressors",
    "history",
    "is_complete",
    "open_cube",
    "read_attrs",
    "store_state",
    "write_cube",
]

#: Name of the root attribute holding cubepipe's provenance and completion flag.
ATTR = "cubepipe"
#: Root attribute holding the text coordinates (``band_name``, ``source``): ``{name:
#: {"dims": [...], "values": nested lists of str}}``. zarr v3's text data types
#: (``string``, ``fixed_length_utf32``, ``null_terminated_bytes``) are not read by every
#: v3 reader (tensorstore refuses all three), so text never becomes an array; open_cube
#: turns these back into coordinates, and plain xarray shows them in ``ds.attrs``.
TEXT_ATTR = "cubepipe_text_coords"


def _text_to_attrs(ds: xr.Dataset) -> tuple[xr.Dataset, dict[str, Any]]:
    """``ds`` without its text variables, and those variables as :data:`TEXT_ATTR`."""
    text = {
        str(name): {"dims": [str(d) for d in var.dims], "values": var.values.astype(str).tolist()}
        for name, var in ds.variables.items()
        if var.dtype.kind in "OUS"
    }
    if not text:
        return ds, {}
    bad = [n for n in text if n in ds.data_vars]
    if bad:
        raise InputError(
            f"data variable(s) {bad} hold text; cube stores hold numbers (text belongs in "
            "coordinates or attributes)"
        )
    return ds.drop_vars(list(text)), text


def _text_from_attrs(ds: xr.Dataset) -> xr.Dataset:
    """Text coordinates back from :data:`TEXT_ATTR` (stores written before it kept them
    as zarr string arrays, which xarray reads as they are)."""
    text = ds.attrs.get(TEXT_ATTR)
    if not isinstance(text, Mapping):
        return ds
    coords = {}
    for name, spec in text.items():
        try:
            values = np.array(spec["values"], dtype=object)
            dims = tuple(spec["dims"])
            if values.ndim != len(dims) or any(
                d in ds.sizes and ds.sizes[d] != n for d, n in zip(dims, values.shape, strict=True)
            ):
                raise ValueError("shape")
        except (KeyError, TypeError, ValueError):
            raise InvalidStoreError(
                f"the store's {TEXT_ATTR} attribute is damaged at {name!r}; restore the "
                "store's zarr.json or write the store again"
            ) from None
        coords[name] = (dims, values)
    out = ds.assign_coords(coords)
    out.attrs = {k: v for k, v in ds.attrs.items() if k != TEXT_ATTR}
    return out


def default_compressors() -> list[Any]:
    """The codecs every cube variable is written with: blosc (lz4, level 5, byte
    shuffle), then crc32c.

    Chosen by measurement on real and synthetic float cubes (docs/DESIGN.md, "Codec";
    ``benchmarks/bench_store.py --codecs``): it stores float cubes as small as zstd
    level 1 did and encodes ~3x, decodes ~3x faster. The CRC-32C lets ``--resume`` and
    every read tell a chunk cut short by a kill or damaged later from a whole one (blosc
    has no checksum of its own). All are zarr v3 core codecs: xarray, zarr-python and
    tensorstore read the stores. Stores written before (``zstd`` level 1 with its frame
    checksum) are read and resumed as before.
    """
    return [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), Crc32cCodec()]


def _jsonable(v: Any) -> Any:
    return v.item() if hasattr(v, "item") and np.ndim(v) == 0 else np.asarray(v).tolist()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# -- reading -------------------------------------------------------------------------------


def read_attrs(path: str | Path) -> dict[str, Any]:
    """The root attributes of the store at ``path`` (no data is read)."""
    return dict(_open_group(path, mode="r").attrs)


def store_state(path: str | Path) -> str:
    """``"missing"``, ``"not-a-store"``, ``"foreign"`` (a zarr group cubepipe did not
    write), ``"incomplete"`` or ``"complete"``. ``path`` may be an object storage URL."""
    if is_remote(path):
        return _remote_state(remote_store(str(path)))
    p = local_path(path, "a store")
    if not p.exists():
        return "missing"
    if not (p / "zarr.json").is_file() and not (p / ".zgroup").is_file():
        return "not-a-store"
    return _state_of_group(p)


def _state_of_group(path: Path | str) -> str:
    """The state of a store whose root metadata exists, from its attrs."""
    try:
        attrs = read_attrs(path)
    except InvalidStoreError:
        return "not-a-store"
    meta = attrs.get(ATTR)
    if not isinstance(meta, Mapping):
        return "foreign"
    return "complete" if meta.get("complete") is True else "incomplete"


def _remote_state(url: str) -> str:
    found = _remote_probe(url)
    return found if found is not None else _state_of_group(url)


def _remote_probe(url: str) -> str | None:
    """``"missing"``/``"not-a-store"`` for a URL with no root metadata, None if it has
    some; one-line errors if the object store cannot be asked."""
    fs, root = remote_fs(url)
    try:
        if not fs.exists(f"{root}/zarr.json") and not fs.exists(f"{root}/.zgroup"):
            return "missing" if not fs.exists(root) else "not-a-store"
    except Exception as exc:
        raise _unreachable(url, exc) from None
    return None


def _unreachable(url: str, exc: Exception) -> Exception:
    """The one-line error for a store on object storage that could not be asked about:
    no credentials, an endpoint that does not answer, access refused, ..."""
    user = as_user_error(exc)
    if user is not None:
        return type(user)(f"{url}: {user}")
    return InputError(
        f"{url}: cannot be reached ({type(exc).__name__}: {' '.join(str(exc).split())})"
    )


def _check_meta(path: Path | str, attrs: Mapping[str, Any]) -> None:
    """Refuse a store whose cubepipe attrs are not the shape cubepipe writes."""
    meta = attrs.get(ATTR)
    if meta is None:
        return
    try:
        if not isinstance(meta, Mapping):
            raise InvalidStoreError(f"{ATTR} is a {type(meta).__name__}, not a mapping")
        history(attrs)
    except InvalidStoreError as exc:
        raise InvalidStoreError(f"{path}: {exc}") from None


def is_complete(path: str | Path) -> bool | None:
    """True/False for stores cubepipe wrote; None for zarr stores written by other tools."""
    state = store_state(path)
    if state in ("missing", "not-a-store"):
        _open_group(path, mode="r")  # raises the right error
    return None if state == "foreign" else state == "complete"


def history(ds_or_attrs: xr.Dataset | Mapping[str, Any]) -> list[dict[str, Any]]:
    """The provenance history (oldest first) carried by a dataset or attrs mapping."""
    attrs = ds_or_attrs.attrs if isinstance(ds_or_attrs, xr.Dataset) else ds_or_attrs
    meta = attrs.get(ATTR)
    if not isinstance(meta, Mapping):
        return []
    entries = meta.get("history", [])
    if not isinstance(entries, list) or not all(isinstance(h, Mapping) for h in entries):
        raise InvalidStoreError(
            f"the store's provenance attrs are damaged: {ATTR}.history is a "
            f"{type(entries).__name__}, not a list of entries; restore the store's zarr.json "
            "or write the store again"
        )
    return [dict(h) for h in entries]


def _open_group(path: str | Path, *, mode: Literal["r", "r+", "a", "w", "w-"]) -> zarr.Group:
    if is_remote(path) and mode == "r":
        url = remote_store(str(path))
        _remote_probe(url)  # one request first: a clear error if it cannot be reached
        try:
            node = zarr.open(store=zarr_store(url, read_only=True), mode="r")
        except FileNotFoundError:
            raise StoreNotFoundError(url) from None
        except Exception as exc:
            raise InvalidStoreError(
                f"{url} is not a readable zarr store ({type(exc).__name__}: {exc})"
            ) from exc
        if not isinstance(node, zarr.Group):
            raise InvalidStoreError(f"{url} holds a single zarr array, not a group")
        return node
    p = local_path(path, "a store")
    if not p.exists():
        raise StoreNotFoundError(p)
    if not p.is_dir():
        raise InvalidStoreError(
            f"{p} is a file, not a zarr store (a directory); ingest it first with "
            f"`cubepipe ingest {p} -o OUT.zarr`"
        )
    try:
        node = zarr.open(store=str(p), mode=mode)
    except Exception as exc:  # zarr raises several types for "no metadata here"
        raise InvalidStoreError(
            f"{p} is not a readable zarr store ({type(exc).__name__}: {exc}); "
            "cube stores are written by `cubepipe ingest`"
        ) from exc
    if not isinstance(node, zarr.Group):
        raise InvalidStoreError(f"{p} holds a single zarr array, not a group of cube variables")
    return node


def _has_consolidated_metadata(path: Path) -> bool:
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(meta.get("consolidated_metadata"))


def open_cube(
    path: str | Path, *, allow_incomplete: bool = False, keep_bytes: int = 0
) -> xr.Dataset:
    """Open a cube store lazily.

    Parameters
    ----------
    path
        A zarr v3 store written by cubepipe (or any zarr group xarray can open).
    allow_incomplete
        Read a store whose writer has not finished. Chunks not yet written read as the
        variable's fill value (NaN for floats).
    keep_bytes
        For a computation that reads the store twice (fit, then apply): keep up to this
        many bytes of decoded chunks from the first read for the second, which then
        re-reads only the rest (see :class:`~cubepipe.storage.chunkio.KeptChunks`).
        Kept chunks are released as the second read takes them. 0 keeps nothing.

    Returns
    -------
    xarray.Dataset
        Every variable backed by a dask array chunked exactly as on disk; nothing is read
        until computed.

    Raises
    ------
    StoreNotFoundError, InvalidStoreError, IncompleteStoreError
    """
    if is_remote(path):
        return _open_remote(remote_store(str(path)), allow_incomplete)
    # Absolute before any graph is built: its tasks may run in dask workers whose working
    # directory is not this process's (a relative path would read another file there).
    p = Path(os.path.abspath(local_path(path, "a store")))
    state = store_state(p)
    if state in ("missing", "not-a-store"):
        _open_group(p, mode="r")  # raises StoreNotFoundError / InvalidStoreError
    if state == "incomplete" and not allow_incomplete:
        raise IncompleteStoreError(p)
    if state in ("complete", "incomplete"):
        _check_meta(p, read_attrs(p))
    try:
        ds = xr.open_zarr(
            str(p), chunks=None, consolidated=_has_consolidated_metadata(p), zarr_format=None
        )
    except Exception as exc:
        raise InvalidStoreError(f"{p} could not be opened as a cube store: {exc}") from exc
    chunks = _stored_chunks(ds)  # before direct reads replace the variables
    strict = state == "complete" and read_attrs(p)[ATTR].get("all_chunks") is True
    if strict:
        _check_chunks_exist(ds, p)
    ds = _read_directly(ds, p, KeptChunks(keep_bytes) if keep_bytes > 0 else None, strict)
    return _chunked_as_stored(ds, str(p), chunks)


def _open_remote(url: str, allow_incomplete: bool) -> xr.Dataset:
    """:func:`open_cube` of a store on object storage, read through zarr-python's fsspec
    store (the backend's credentials and endpoint from the environment)."""
    state = store_state(url)
    if state in ("missing", "not-a-store"):
        _open_group(url, mode="r")  # raises StoreNotFoundError / InvalidStoreError
        raise StoreNotFoundError(url)
    if state == "incomplete" and not allow_incomplete:
        raise IncompleteStoreError(url)
    attrs = read_attrs(url)
    if state in ("complete", "incomplete"):
        _check_meta(url, attrs)
    try:
        ds = xr.open_zarr(zarr_store(url, read_only=True), chunks=None, zarr_format=None)
    except Exception as exc:
        raise InvalidStoreError(f"{url} could not be opened as a cube store: {exc}") from exc
    if state == "complete" and attrs[ATTR].get("all_chunks") is True:
        _check_remote_chunks(ds, url)
    return _chunked_as_stored(ds, url, _stored_chunks(ds))


def _stored_chunks(ds: xr.Dataset) -> dict[Hashable, int]:
    chunks: dict[Hashable, int] = {}
    # Data variables last, so their chunks win: a 1-D coordinate along ``image`` (e.g.
    # ``height``) is stored in one chunk, which must not make every image one chunk.
    for var in [*ds.coords.values(), *ds.data_vars.values()]:
        chunks.update(var.encoding.get("preferred_chunks") or {})
    return chunks


def _chunked_as_stored(ds: xr.Dataset, store: str, chunks: dict[Hashable, int]) -> xr.Dataset:
    """``ds`` chunked exactly as on disk, with task names that say what they are on a
    dashboard (``cubepipe-read-cube-<token>`` rather than ``open_dataset-<token>cube``)
    and the chunk getter that reports undecodable chunks in one line; text coordinates
    back from the attributes (:data:`TEXT_ATTR`)."""
    return _text_from_attrs(ds).chunk(
        chunks,
        name_prefix="cubepipe-read-",
        inline_array=True,
        from_array_kwargs={"getitem": functools.partial(_checked_getter, store)},
    )


def _check_remote_chunks(ds: xr.Dataset, url: str) -> None:
    """:func:`_check_chunks_exist` for object storage: one listing per variable."""
    fs, root = remote_fs(url)
    for name, var in ds.variables.items():
        if var.ndim == 0 or name in ds.dims:
            continue
        try:
            text = fs.cat_file(f"{root}/{name}/zarr.json")
        except OSError:
            continue
        have = {f[len(f"{root}/{name}/") :] for f in fs.find(f"{root}/{name}/c")}
        missing = _first_missing_chunk(text, have.__contains__)
        if missing is not None:
            raise _missing_chunk_error(name, *missing, f"{url}/{name}")


def _first_missing_chunk(
    meta_text: str | bytes, present: Callable[[str], bool]
) -> tuple[tuple[int, ...], str] | None:
    """The first chunk (index, key) of an array's regular grid that ``present`` does not
    find, from its ``zarr.json``; None if all are there or the metadata is not readable
    (zarr itself reports that). For a sharded array the grid is the shards' and the keys
    name shard files."""
    try:
        meta = json.loads(meta_text)
        grid = meta["chunk_grid"]["configuration"]["chunk_shape"]
        keys = meta["chunk_key_encoding"]
        if meta["chunk_grid"]["name"] != "regular" or keys["name"] != "default":
            return None
        sep = (keys.get("configuration") or {}).get("separator", "/")
        counts = [-(-int(n) // int(c)) for n, c in zip(meta["shape"], grid, strict=True)]
    except (ValueError, KeyError, TypeError):
        return None
    for idx in np.ndindex(*counts):
        key = sep.join(["c", *map(str, idx)])
        if not present(key):
            return idx, key
    return None


def _is_file_in(directory: Path, key: str) -> bool:
    return (directory / key).is_file()


def _missing_chunk_error(name: Hashable, idx: tuple[int, ...], key: str, where: str) -> Exception:
    return InvalidStoreError(
        f"chunk {idx} of variable {str(name)!r} is missing ({where}/{key}) from a store "
        "marked complete: the store was damaged after it was written; re-run the step that "
        "wrote it with --overwrite"
    )


def _checked_getter(store: str, a: Any, b: Any, asarray: bool = True, lock: Any = None) -> Any:
    """dask's chunk getter for variables read through zarr-python/xarray, with a chunk
    that cannot be decoded (damaged, or decoding to the wrong size) reported in one line
    naming the store, as the direct path does."""
    try:
        return getter(a, b, asarray=asarray, lock=lock)
    except (ValueError, RuntimeError, TypeError, zarr.errors.BaseZarrError) as exc:
        where = ", ".join(f"{s.start}:{s.stop}" for s in b) if isinstance(b, tuple) else b
        raise InvalidStoreError(
            f"a chunk of store {store} (at [{where}]) is damaged "
            f"({type(exc).__name__}: {exc}); re-run the step that wrote this store with "
            "--overwrite"
        ) from exc


def _check_chunks_exist(ds: xr.Dataset, path: Path) -> None:
    """In a complete cubepipe store every chunk of every variable was written (cubepipe
    writes empty chunks too): check the variables read through zarr-python, whose
    missing chunks would silently read as the fill value. (Directly read variables check
    each chunk as they read it: :attr:`ChunkLayout.strict`.)"""
    for name, var in ds.variables.items():
        if var.ndim == 0 or direct_layout(path / str(name)) is not None:
            continue
        where = path / str(name)
        try:
            text = (where / "zarr.json").read_text()
        except OSError:
            continue  # zarr itself reports unreadable metadata
        missing = _first_missing_chunk(text, functools.partial(_is_file_in, where))
        if missing is not None:
            raise _missing_chunk_error(name, *missing, str(where))


def _read_directly(
    ds: xr.Dataset, path: Path, kept: KeptChunks | None, strict: bool = False
) -> xr.Dataset:
    """Back each variable whose chunks :mod:`.chunkio` can read (and that xarray does not
    decode: no scale/offset, no non-NaN fill mask, no dtype change) by direct chunk reads."""
    replaced: dict[Hashable, xr.Variable] = {}
    for name, var in ds.variables.items():
        if var.ndim == 0 or name in ds.dims:
            continue
        layout = direct_layout(path / str(name), strict=strict)
        enc = var.encoding
        fill = enc.get("_FillValue")
        if (
            layout is None
            or var.dtype != layout.dtype
            or var.shape != layout.shape
            or "scale_factor" in enc
            or "add_offset" in enc
            or (fill is not None and not (isinstance(fill, float) and np.isnan(fill)))
        ):
            continue
        token = dask.base.tokenize(layout, (path / str(name) / "zarr.json").stat().st_mtime_ns)
        arr = da.from_array(
            DirectChunkArray(layout, kept),
            chunks=layout.chunks,
            name=f"cubepipe-read-{name}-{token}",
            inline_array=True,
            asarray=False,
            meta=np.empty((0,) * var.ndim, dtype=var.dtype),
        )
        replaced[name] = var.copy(deep=False, data=arr)
    if not replaced:
        return ds
    coords = {k: v for k, v in replaced.items() if k in ds.coords}
    data = {k: v for k, v in replaced.items() if k not in ds.coords}
    return ds.assign_coords(coords).assign(data)


# -- writing -------------------------------------------------------------------------------


def _target_chunks(var: xr.Variable, overrides: Mapping[Any, int] | None) -> tuple[int, ...]:
    sizes = dict(zip(var.dims, var.shape, strict=True))
    chunks = default_chunks(sizes, var.dtype.itemsize, overrides=overrides)
    return tuple(chunks[d] for d in var.dims)


def _prepare(
    ds: xr.Dataset,
    chunks: Mapping[Any, int] | None,
    shards: Mapping[Any, int] | str | None = None,
) -> tuple[xr.Dataset, dict]:
    """Rechunk every data variable to its store chunking, as dask arrays; a sharded pixel
    variable (dims ``y`` and ``x``) is rechunked to its shards, one dask block per shard
    (a shard is written by one task: two tasks writing chunks of one shard would race)."""
    if not ds.data_vars:
        raise InputError("nothing to write: the dataset has no data variables")
    if TEXT_ATTR in ds.attrs:  # opened with plain xarray: its text coordinates, if they fit
        try:
            ds = _text_from_attrs(ds)
        except InvalidStoreError:
            ds = ds.copy()
            ds.attrs = {k: v for k, v in ds.attrs.items() if k != TEXT_ATTR}  # stale: dropped
    out, text = _text_to_attrs(ds.drop_encoding())
    if text:
        out.attrs = {**out.attrs, TEXT_ATTR: text}
    encoding: dict[str, dict[str, Any]] = {}
    for name, var in out.variables.items():
        if name in out.dims and name not in out.data_vars:
            continue  # index coordinates are small and written eagerly
        data = var.data
        if var.ndim == 0:
            continue
        target = _target_chunks(var, chunks)
        shard = None
        if {"y", "x"} <= set(var.dims) and name in out.data_vars:
            sizes = dict(zip(var.dims, var.shape, strict=True))
            got = shard_shape(
                sizes, dict(zip(var.dims, target, strict=True)), var.dtype.itemsize, shards
            )
            shard = None if got is None else tuple(got[d] for d in var.dims)
        blocks = shard or target
        if isinstance(data, da.Array):
            if any(np.isnan(c) for cs in data.chunks for c in cs):
                raise InputError(f"variable {name!r} has unknown chunk sizes; compute them first")
            arr = data.rechunk(blocks) if data.chunksize != blocks else data
        elif name in out.data_vars:
            arr = da.from_array(np.asarray(data), chunks=blocks, name=False)
        else:
            continue
        out[name] = out[name].copy(data=arr)
        encoding[str(name)] = {"chunks": target, "compressors": default_compressors()}
        if shard is not None:
            encoding[str(name)]["shards"] = shard
        if "_FillValue" in var.attrs and var.dtype.kind in "iu":
            # A CF-encoded integer variable (storage.encodings): make the zarr array's
            # fill_value agree with its _FillValue, so readers that mask by either agree.
            encoding[str(name)]["fill_value"] = var.dtype.type(var.attrs["_FillValue"])
    return out, encoding


def _to_numpy(block: Any) -> np.ndarray:
    # Device arrays (CuPy) expose .get(); storage never imports CuPy itself.
    if not isinstance(block, np.ndarray) and hasattr(block, "get"):
        block = block.get()
    return np.asarray(block)


def _write_block(
    block: Any,
    *,
    target: zarr.Array | ChunkLayout,
    var: str,
    allow_inf: bool,
    block_info: dict | None = None,
) -> np.ndarray:
    """Write one block; return the count of its infinite values (one per block).

    An infinite value in an output is an overflow of its dtype (or an infinite input):
    unless ``allow_inf``, the block is refused before it is written.
    """
    assert block_info is not None
    host = _to_numpy(block)
    n_inf = int(np.count_nonzero(np.isinf(host))) if host.dtype.kind == "f" else 0
    if n_inf and not allow_inf:
        raise NonFiniteError(
            f"{n_inf} values of variable {var!r} in chunk "
            f"{tuple(block_info[0]['chunk-location'])} are infinite: the result overflows "
            f"{host.dtype} (or the input holds +-inf); nothing was marked complete. Rescale "
            "the input or use float64, or pass --allow-nonfinite (allow_nonfinite=True) to "
            "write them anyway with the count recorded"
        )
    if isinstance(target, ChunkLayout):  # blocks are the store's chunks (see _writer)
        target.write_chunk(tuple(block_info[0]["chunk-location"]), host)
    else:
        loc = block_info[0]["array-location"]
        target[tuple(slice(a, b) for a, b in loc)] = host
    return np.full((1,) * block.ndim, n_inf, dtype=np.int64)


def _writer(path: Path, name: str, data: da.Array) -> zarr.Array | ChunkLayout:
    """Direct chunk writes when the array's layout allows them and dask's blocks are its
    chunks; zarr-python otherwise."""
    layout = direct_layout(path / name)
    if (
        layout is not None
        and np.dtype(data.dtype) == layout.dtype
        and tuple(data.shape) == layout.shape
        and all(
            all(c == step for c in cs[:-1]) and cs[-1] <= step
            for cs, step in zip(data.chunks, layout.chunks, strict=True)
        )
    ):
        return layout
    return zarr.open_array(
        store=str(path), path=name, mode="r+", config={"write_empty_chunks": True}
    )


def _remote_writer(url: str, name: str) -> zarr.Array:
    return zarr.open_array(
        store=zarr_store(url, read_only=False),
        path=name,
        mode="r+",
        config={"write_empty_chunks": True},
    )


def _block_done(
    target: zarr.Array, store_root: Path | str, name: str, idx: tuple[int, ...]
) -> bool:
    """A chunk counts as written only if its file (object) exists and decodes (checksum
    included)."""
    key = target.metadata.encode_chunk_key(idx)
    if isinstance(store_root, str):
        fs, root = remote_fs(store_root)
        if not fs.exists(f"{root}/{name}/{key}"):
            return False
    elif not (store_root / name / key).is_file():
        return False
    try:
        target.get_block_selection(idx)
    except Exception:
        return False
    return True


def _history_entry(
    op: str,
    params: Mapping[str, Any] | None,
    inputs: Iterable[Any],
    device: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    reserved = {"op", "params", "inputs", "device", "started", "finished", "results", "resumed"}
    clash = sorted(reserved & set(extra or {}))
    if clash:
        raise InputError(f"provenance keys {clash} are reserved for cubepipe's own history fields")
    return {
        "op": op,
        "params": json.loads(json.dumps(dict(params or {}), default=str)),
        "inputs": [str(i) for i in inputs],
        "device": device,
        "started": _now(),
        "finished": None,
        **json.loads(json.dumps(dict(extra or {}), default=str)),
    }


def _fingerprint(inputs: Iterable[str]) -> list[str]:
    """A cheap fingerprint of each input, compared by ``--resume``: for a store, its
    history (op and start time of each entry); for a file, its size and mtime; for a
    directory or glob, the same for every file it holds."""
    prints = []
    for src in inputs:
        h = hashlib.sha256()
        if is_remote(src):  # a store on object storage: its URL and history
            h.update(src.encode())
            try:
                entries = history(read_attrs(src))
            except CubepipeError:
                entries = []
            h.update(json.dumps([(e.get("op"), e.get("started")) for e in entries]).encode())
            prints.append(h.hexdigest()[:20])
            continue
        matches = [src] if os.path.lexists(src) else sorted(glob.glob(src))
        for m in matches:
            real = resolve(m)
            h.update(str(real).encode())
            if (real / "zarr.json").is_file() or (real / ".zgroup").is_file():
                try:
                    entries = history(read_attrs(real))
                except CubepipeError:
                    entries = []
                h.update(json.dumps([(e.get("op"), e.get("started")) for e in entries]).encode())
            elif real.is_dir():
                for dirpath, dirs, files in os.walk(real):
                    dirs.sort()
                    for f in sorted(files):
                        st = os.stat(os.path.join(dirpath, f))
                        h.update(f"{f}:{st.st_size}:{st.st_mtime_ns};".encode())
            elif real.exists():
                st = real.stat()
                h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        prints.append(h.hexdigest()[:20])
    return prints


def same_option(a: Any, b: Any, cwd_a: str, cwd_b: str) -> bool:
    """Equal option values, or two spellings of one path (each relative to its cwd)."""
    if a == b:
        return True
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return all(same_option(x, y, cwd_a, cwd_b) for x, y in zip(a, b, strict=True))
    if isinstance(a, str) and isinstance(b, str) and a and b:
        return os.path.normpath(os.path.join(cwd_a, a)) == os.path.normpath(os.path.join(cwd_b, b))
    return False


def _resume_mismatch(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """What differs between the run that started a store (its last history entry) and
    this one, or None: op, inputs (by fingerprint), parameters, command-line options."""
    if old.get("op") != new["op"]:
        return f"it was started by {old.get('op')!r}, this run is {new['op']!r}"
    if "fingerprint" in old:
        if (
            len(old.get("inputs", [])) != len(new["inputs"])
            or old["fingerprint"] != new["fingerprint"]
        ):
            return (
                f"its input was {old.get('inputs')} and has changed or is not this run's "
                f"{new['inputs']}"
            )
    if old.get("params") != new["params"]:
        keys = sorted(
            k
            for k in set(old.get("params") or {}) | set(new["params"])
            if (old.get("params") or {}).get(k) != new["params"].get(k)
        )
        return f"its parameters differ ({', '.join(map(str, keys))})"
    rec, cur = old.get("cli"), new.get("cli")
    if isinstance(rec, Mapping) and isinstance(cur, Mapping):
        a, b = rec.get("options") or {}, cur.get("options") or {}
        for key in sorted(set(a) & set(b)):  # an option one version lacks: not compared
            if key in ("source", "sources", "store"):
                continue  # compared by fingerprint
            if not same_option(a.get(key), b.get(key), str(rec.get("cwd")), str(cur.get("cwd"))):
                return f"option {key.replace('_', '-')} was {a.get(key)!r}, now {b.get(key)!r}"
    return None


def _check_resumable(path: Path, ds: xr.Dataset, entry: Mapping[str, Any]) -> dict[str, Any]:
    group = _open_group(path, mode="r")
    attrs = dict(group.attrs)
    entries = history(attrs)
    if entries:
        why = _resume_mismatch(entries[-1], entry)
        if why:
            raise InputError(
                f"cannot resume {path}: {why}; rerun the original command with --resume, or "
                "use --overwrite to start over"
            )
    for name, var in ds.data_vars.items():
        arr = group.get(str(name))
        if not isinstance(arr, zarr.Array):  # missing, or a subgroup of that name
            raise InputError(
                f"cannot resume {path}: it has no variable {name!r}, so it was started by a "
                "different command; use --overwrite to start over"
            )
        if tuple(arr.shape) != tuple(var.shape) or np.dtype(arr.dtype) != var.dtype:
            raise InputError(
                f"cannot resume {path}: variable {name!r} there is {arr.dtype}{tuple(arr.shape)}"
                f" but this run writes {var.dtype}{tuple(var.shape)}; use --overwrite"
            )
        outer = tuple(arr.shards or arr.chunks)
        if isinstance(var.data, da.Array) and outer != tuple(var.data.chunksize):
            kind = "shards" if arr.shards else "chunks"
            raise InputError(
                f"cannot resume {path}: variable {name!r} there was written in {kind} of "
                f"{outer}, this run writes blocks of {tuple(var.data.chunksize)} (other "
                "--chunks or --shards); rerun with the original options, or --overwrite"
            )
    return attrs


@contextlib.contextmanager
def claim_output(
    path: str | Path,
    inputs: Iterable[Any] = (),
    *,
    resume: bool = False,
    overwrite: bool = False,
) -> Iterator[Path]:
    """Check an output before any work and hold its write lock meanwhile.

    For a command that fits before it writes: refuses at once (not after the fit pass)
    an output that overlaps ``inputs``, or that exists while neither ``resume`` nor
    ``overwrite`` was given; then holds :func:`~cubepipe.storage.guard.output_lock`, which
    :func:`write_cube` takes again (re-entrant). Yields ``path`` resolved.
    """
    if is_remote(path):
        url = remote_store(str(path))
        with remote_lock(url):
            state = store_state(url)
            if state == "not-a-store":
                raise StoreExistsError(
                    f"{url} exists and is not a zarr store; refusing to replace it"
                )
            if state != "missing" and not (resume or overwrite):
                raise StoreExistsError(
                    f"{url} already exists: pass --resume to finish it or --overwrite to replace it"
                )
            yield url  # type: ignore[misc]
        return
    real = resolve(path)
    check_disjoint(real, [str(i) for i in inputs])
    # The lock first: a store another live process is writing is "being written by",
    # not "incomplete (an interrupted run?)".
    with user_os_errors(path, "writing"), output_lock(real):
        state = store_state(real)
        if state == "not-a-store":
            raise StoreExistsError(f"{path} exists and is not a zarr store; refusing to replace it")
        if state != "missing" and not (resume or overwrite):
            raise StoreExistsError(
                f"{path} already exists"
                + (" and is incomplete (an interrupted run?)" if state == "incomplete" else "")
                + ": pass --resume to finish it or --overwrite to replace it"
            )
        yield real


def _stage_of(real: Path) -> Path:
    """Where ``--overwrite`` writes the new store before swapping it in."""
    return real.with_name(f".{real.name}.overwrite")


def _plan(
    real: Path,
    shown: Path,
    prepared: xr.Dataset,
    entry: Mapping[str, Any],
    resume: bool,
    overwrite: bool,
) -> tuple[Path | None, dict[str, Any] | None, bool]:
    """(where to write, attrs of the store being resumed, swap into ``real`` at the end);
    ``None`` as the path: nothing to do."""
    stage = _stage_of(real)
    if resume and store_state(stage) == "incomplete":
        return stage, _check_resumable(stage, prepared, entry), True
    state = store_state(real)
    if state == "missing":
        return real, None, False
    if state == "not-a-store":
        raise StoreExistsError(f"{shown} exists and is not a zarr store; refusing to replace it")
    if resume and state == "complete":
        _check_same_run(real, shown, entry)
        return None, None, False  # resuming a finished job is a no-op
    if resume and state == "incomplete":
        return real, _check_resumable(real, prepared, entry), False
    if overwrite:
        if stage.exists():
            shutil.rmtree(stage)  # a killed --overwrite's leftover
        return stage, None, True
    if state == "incomplete":
        raise StoreExistsError(
            f"{shown} exists and is incomplete (an interrupted run?): pass --resume to finish "
            "it or --overwrite to start over"
        )
    raise StoreExistsError(f"{shown} already exists: pass --overwrite to replace it")


def _check_same_run(path: Path | str, shown: Path | str, entry: Mapping[str, Any]) -> None:
    """``--resume`` of a complete store: refuse one that another run made."""
    entries = history(read_attrs(path))
    why = _resume_mismatch(entries[-1], entry) if entries else "it has no history"
    if why:
        raise InputError(
            f"{shown} is complete but was not made by this run ({why}); to replace it, "
            "pass --overwrite instead of --resume"
        )


def _swap(stage: Path, real: Path) -> None:
    """Put the finished ``stage`` where ``real`` is; the old store is removed last."""
    aside = real.with_name(f".{real.name}.replaced-{secrets.token_hex(4)}")
    old: Path | None
    try:
        os.rename(real, aside)
        old = aside
    except FileNotFoundError:
        old = None
    os.rename(stage, real)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _durable(durable: bool | None) -> bool:
    if durable is not None:
        return durable
    return os.environ.get("CUBEPIPE_DURABLE", "").strip().lower() in ("1", "true", "yes", "on")


def _sync(path: Path) -> None:
    """Flush ``path``'s file system (chunk files written without per-file fsync) so a
    completion marker written next is never on disk before the data it vouches for."""
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            import ctypes  # noqa: PLC0415

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.syncfs(fd) == 0:
                return
        except (OSError, AttributeError):
            pass
        os.sync()
    finally:
        os.close(fd)


def write_cube(
    ds: xr.Dataset,
    path: str | os.PathLike[str],
    *,
    op: str = "write",
    params: Mapping[str, Any] | None = None,
    inputs: Iterable[Any] = (),
    device: str = "cpu",
    chunks: Mapping[Any, int] | None = None,  # by dim name (see layout.default_chunks)
    resume: bool = False,
    overwrite: bool = False,
    results: Mapping[str, Any] | None = None,
    summarize: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None,
    provenance: Mapping[str, Any] | None = None,
    allow_nonfinite: bool = False,
    durable: bool | None = None,
    shards: Mapping[Any, int] | str | None = None,
) -> Path:
    """Write ``ds`` to a new cube store at ``path``, chunk by chunk.

    Parameters
    ----------
    ds
        Dataset whose data variables are dask (or NumPy) arrays. Its ``cubepipe``
        provenance attrs, if any, are carried over and one history entry is appended.
    path
        Output directory.
    op, params, inputs, device
        Recorded in the new history entry.
    chunks
        Per-dim chunk sizes overriding the defaults (band whole, y/x 512, <= 128 MiB).
    shards
        zarr v3 sharding of the pixel variables: ``{dim: size}`` (rounded up to whole
        chunks) or ``"auto"`` (along ``image``/``frame``, ~256 MiB a shard; see
        :func:`~cubepipe.storage.layout.shard_shape`). Many chunks then share one file
        (one object), which file systems and object stores handle far better than
        millions of small ones; plain zarr/xarray read them. ``"none"`` (or ``{}``): one
        file per chunk. None (default): ``"auto"`` for an image/frame variable of 4096
        chunks or more (:data:`~cubepipe.storage.layout.AUTO_SHARD_MIN_CHUNKS`), else
        one file per chunk.
    resume
        Continue an interrupted write of the same computation: chunks already on disk
        (and decodable) are skipped, and only the missing ones are computed.
    overwrite
        Replace an existing store at ``path``: the new store is written beside it and
        swapped in only once complete, so a failed run leaves the old one as it was.
    results, summarize
        Extra dask collections (e.g. error-metric partials) computed in the same pass as
        the writes, so tasks they share with the data are run once; ``summarize`` turns
        their values into a JSON-ready mapping, recorded as the history entry's
        ``results``.
    provenance
        Extra JSON-ready keys for the new history entry (the CLI records the command and
        its options under ``cli``, which ``cubepipe run --resume`` compares).
    durable
        Flush the file system (``syncfs``) before the completion marker is written, so
        that after a power loss or kernel crash a store marked complete still has all its
        chunks. Off by default (``None``: env ``CUBEPIPE_DURABLE=1`` turns it on): it cost
        about 1 s of a 4.3 s 1x standardize here, and a killed process loses nothing the
        kernel already holds. The root metadata is always fsynced.
    allow_nonfinite
        Write +-inf values in float outputs (their count is recorded in the history entry's
        ``nonfinite``) instead of refusing them: an infinite output is an overflow of its
        dtype, or an infinite input.

    Returns
    -------
    pathlib.Path
        The store, marked complete (``attrs["cubepipe"]["complete"] is True``).

    Notes
    -----
    Order of writing: metadata with ``complete: false``, then every chunk (one dask
    computation, so data variables sharing inputs read them once), then the attrs with
    ``complete: true`` and consolidated metadata last. A writer killed at any point
    leaves a store that :func:`open_cube` refuses.

    Before anything is read or deleted, ``path`` is refused if it is, contains or lies
    inside one of ``inputs``; the output is locked for the whole write
    (:func:`~cubepipe.storage.guard.output_lock`), so a second writer fails at once;
    ``resume`` refuses a store that was started from other inputs (a fingerprint of
    each) or with other parameters.

    Raises
    ------
    InputError, StoreExistsError, StoreLockedError, NonFiniteError
    """
    if is_remote(path):
        return _write_remote(
            ds, remote_store(str(path)), op, params, [str(i) for i in inputs], device, chunks,
            shards, resume, overwrite, results, summarize, provenance, allow_nonfinite,
        )  # fmt: skip
    # Absolute: workers write here, whatever their working directory.
    p = Path(os.path.abspath(local_path(path, "an output store")))
    real = resolve(p)
    inputs = [str(i) for i in inputs]
    check_disjoint(real, inputs)
    prepared, encoding = _prepare(ds, chunks, shards)
    entry = _history_entry(op, params, inputs, device, provenance)
    entry["fingerprint"] = _fingerprint(inputs)
    with user_os_errors(p, "writing store"), output_lock(real):
        target, attrs, swap = _plan(real, p, prepared, entry, resume, overwrite)
        if target is None:
            return p
        try:
            _write(
                prepared, encoding, target, ds, entry, attrs, results, summarize,
                allow_nonfinite, _durable(durable),
            )  # fmt: skip
        except BaseException as exc:
            # A stage is all or nothing; a fresh store stays, marked incomplete, for
            # --resume (after a kill, a full disk, a damaged input block), and goes when its
            # data were refused (resuming would refuse them again).
            if swap or (attrs is None and isinstance(exc, NonFiniteError)):
                shutil.rmtree(target, ignore_errors=True)
            raise
        if swap:
            _swap(target, real)
    return p


def _write_remote(
    ds: xr.Dataset,
    url: str,
    op: str,
    params: Mapping[str, Any] | None,
    inputs: list[str],
    device: str,
    chunks: Mapping[Any, int] | None,
    shards: Mapping[Any, int] | str | None,
    resume: bool,
    overwrite: bool,
    results: Mapping[str, Any] | None,
    summarize: Callable[[dict[str, Any]], Mapping[str, Any]] | None,
    provenance: Mapping[str, Any] | None,
    allow_nonfinite: bool,
) -> Any:
    """:func:`write_cube` to object storage (see :mod:`cubepipe.storage.remote`)."""
    for src in inputs:
        s = src.rstrip("/")
        if is_remote(src) and (s == url or url.startswith(s + "/") or s.startswith(url + "/")):
            raise InputError(
                f"output {url} overlaps the input {src}: writing it would destroy the data "
                "being read; choose an output outside the input"
            )
    prepared, encoding = _prepare(ds, chunks, shards)
    entry = _history_entry(op, params, inputs, device, provenance)
    entry["fingerprint"] = _fingerprint(inputs)
    with remote_lock(url):
        state = store_state(url)
        attrs = None
        if state == "not-a-store":
            raise StoreExistsError(f"{url} exists and is not a zarr store; refusing to replace it")
        if state != "missing":
            if resume and state == "complete":
                _check_same_run(url, url, entry)
                return url  # resuming a finished job is a no-op
            if resume and state == "incomplete":
                attrs = _check_resumable(url, prepared, entry)  # type: ignore[arg-type]
            elif overwrite:  # no atomic swap on object storage: the old store goes first
                fs, root = remote_fs(url)
                fs.rm(root, recursive=True)
                fs.invalidate_cache()
            else:
                raise StoreExistsError(
                    f"{url} already exists"
                    + (" and is incomplete (an interrupted run?)" if state == "incomplete" else "")
                    + ": pass --resume to finish it or --overwrite to replace it"
                )
        _write(
            prepared, encoding, url, ds, entry, attrs, results, summarize,
            allow_nonfinite, False,
        )  # fmt: skip
    return url


def _write(
    prepared: xr.Dataset,
    encoding: dict[str, dict[str, Any]],
    p: Path | str,
    ds: xr.Dataset,
    entry: dict[str, Any],
    attrs: dict[str, Any] | None,
    results: Mapping[str, Any] | None,
    summarize: Callable[[dict[str, Any]], Mapping[str, Any]] | None,
    allow_nonfinite: bool,
    durable: bool,
) -> None:
    resuming = attrs is not None
    if attrs is not None:
        if isinstance(p, Path):
            for leftover in p.rglob("*.partial"):  # chunk files a killed writer never renamed
                leftover.unlink()
        meta = copy.deepcopy(attrs[ATTR])
        meta["history"][-1].setdefault("resumed", []).append(_now())
    else:
        meta = {"version": __version__, "complete": False, "history": [*history(ds), entry]}
        prepared.attrs = {
            **{k: v for k, v in ds.attrs.items() if k not in (ATTR, TEXT_ATTR)},
            **{k: v for k, v in prepared.attrs.items() if k == TEXT_ATTR},
            ATTR: meta,
        }
        with zarr.config.set({"array.write_empty_chunks": True}):
            prepared.to_zarr(
                _target(p, read_only=False),
                mode="w-",
                compute=False,
                zarr_format=3,
                consolidated=False,
                encoding=encoding,
            )

    writes, names = [], []
    for name in encoding:
        data = prepared[name].data
        if not isinstance(data, da.Array):
            continue
        done = da.map_blocks(
            _write_block,
            data,
            target=_writer(p, name, data) if isinstance(p, Path) else _remote_writer(p, name),
            var=name,
            allow_inf=allow_nonfinite,
            dtype=np.int64,
            chunks=tuple((1,) * len(c) for c in data.chunks),
            token=f"cubepipe-{entry['op']}-write",
            meta=np.empty((0,) * data.ndim, dtype=np.int64),
        )
        if resuming:
            target = zarr.open_array(store=_target(p, read_only=True), path=name, mode="r")
            for idx in np.ndindex(*done.numblocks):
                if not _block_done(target, p, name, idx):
                    writes.append(done.blocks[idx])
                    names.append(name)
        else:
            writes.append(done)
            names.append(name)
    extra = dict(results or {})
    computed = dask.compute(*writes, *extra.values()) if (writes or extra) else ()
    values = dict(zip(extra, computed[len(writes) :], strict=True))
    nonfinite: dict[str, int] = {}
    for name, counts in zip(names, computed[: len(writes)], strict=True):
        if int(np.sum(counts)):
            nonfinite[name] = nonfinite.get(name, 0) + int(np.sum(counts))

    last = meta["history"][-1]
    last["finished"] = _now()
    if nonfinite:
        last["nonfinite"] = nonfinite
    if extra:
        summary = summarize(values) if summarize else values
        last["results"] = json.loads(json.dumps(summary, default=_jsonable))
    if durable and isinstance(p, Path):
        _sync(p)  # every chunk on disk before the marker that vouches for them
    meta["complete"] = True
    meta["all_chunks"] = True
    group = zarr.open_group(_target(p, read_only=False), mode="r+")
    group.attrs[ATTR] = meta
    with warnings.catch_warnings():
        # zarr warns that consolidated metadata is not (yet) in the v3 spec; we write it
        # so that plain `xarray.open_zarr(path)` opens the store without a warning, and
        # other v3 readers ignore it.
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(_target(p, read_only=False))
    if isinstance(p, Path):
        _fsync_file(p / "zarr.json")


def _target(p: Path | str, *, read_only: bool) -> Any:
    """What zarr opens for a store: a local path as text, an object storage URL as an
    fsspec store carrying the storage options."""
    return str(p) if isinstance(p, Path) else zarr_store(p, read_only=read_only)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
