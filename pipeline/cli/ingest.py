"""``cubepipe ingest SRC... -o OUT.zarr``: files -> a cube store."""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from pathlib import Path

import click
import xarray as xr

from cubepipe.storage import describe, parse_chunks
from cubepipe.storage.ingest import ingest_params, open_input, write_input
from cubepipe.storage.layout import parse_shards
from cubepipe.storage.location import is_remote
from cubepipe.storage.readers.bands import band_files
from cubepipe.storage.readers.collection import expand_sources, skipped_files
from cubepipe.storage.remote import download_inputs
from cubepipe.storage.store import claim_output

from ._app import CliState, command
from ._format import human_bytes
from ._io import LocalPath, apply_invalid, check_shards, invalid_params, json_option, mask_options
from ._jobs import provenance

FORMATS = ["auto", "npy", "tiff", "png", "jpeg", "envi", "video", "netcdf"]
ENCODINGS = ["float32", "float16", "int16-quantized"]


def _wavelengths(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(w) for w in value.split(",")]
    except ValueError:
        raise click.BadParameter(
            f"expected wavelengths in nm separated by commas, e.g. 443,482,561; got {value!r}"
        ) from None


def _band_summary(ds: xr.Dataset) -> str | None:
    """``B1 443 nm, B2 482.5 nm, ...`` for a band stack with wavelengths."""
    if "wavelength" not in ds.coords:
        return None
    wl = ds.coords["wavelength"].values
    names = ds.coords["band_name"].values if "band_name" in ds.coords else range(len(wl))
    return ", ".join(f"{n} {w:g} nm" for n, w in zip(names, wl, strict=True))


@command("ingest")
@click.argument("sources", metavar="SRC...", nargs=-1, required=True)
@click.option(
    "-o",
    "--output",
    required=True,
    type=LocalPath(path_type=Path, remote_ok=True),
    help="Store to write (a path, or s3://...).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS, case_sensitive=False),
    default="auto",
    show_default=True,
    help="Input format; auto detects it from the file's first bytes, then its suffix.",
)
@click.option("--chunks", help="Chunk sizes, e.g. y=512,x=512 (default: band whole, y/x 512).")
@click.option(
    "--encoding",
    type=click.Choice(ENCODINGS),
    default="float32",
    show_default=True,
    help="float32 is lossless; float16 and int16-quantized record their max error.",
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float64"]),
    default=None,
    help="Float type of the cube (default: float32 for 8/16-bit integers, float64 kept).",
)
@click.option(
    "--layout",
    help="Axis order of .npy inputs, e.g. byx, yxb, yx (default: guessed, see the docs).",
)
@click.option(
    "--shards",
    callback=check_shards,
    help="zarr v3 shards: many chunks per file, e.g. frame=256 or y=4096,x=4096, or auto "
    "(image stacks and videos: ~256 MiB of images per file). Default: a file per chunk.",
)
@click.option(
    "--color",
    type=click.Choice(["rgb", "grey"], case_sensitive=False),
    default=None,
    help="PNG/JPEG channels: rgb replicates grey into R,G,B; grey is Pillow's ITU-R 601-2 "
    "luma; alpha is dropped (default: each file's own channels).",
)
@click.option(
    "--stack",
    "stack_by",
    type=click.Choice(["images", "bands"], case_sensitive=False),
    default="images",
    show_default=True,
    help="How several files combine: images (a leading image dim) or bands (single-band "
    "files of one size and grid -> one (band, y, x) cube; Landsat 8/9 band files get "
    "their wavelengths).",
)
@click.option(
    "--wavelengths",
    callback=_wavelengths,
    help="With --stack bands: one wavelength in nm per file, in band order, e.g. 443,482,561.",
)
@click.option(
    "--variable",
    help="NetCDF/HDF5: the variable to read (GROUP/NAME inside a group); default: the only "
    "3-D numeric one.",
)
@click.option(
    "--dims",
    help="NetCDF/HDF5: the variable's dims that become band,y,x, in that order, e.g. "
    "wavelength,lat,lon (default: recognised by name).",
)
@click.option(
    "--no-georef",
    is_flag=True,
    help="Do not read the CRS and transform (GeoTIFF keys, ENVI map info, NetCDF grid "
    "mapping; reading them needs the geo extra).",
)
@click.option("--resume", is_flag=True, help="Finish an interrupted ingest into OUT.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@json_option
@mask_options
def ingest(
    state: CliState,
    sources: tuple[str, ...],
    output: Path,
    fmt: str,
    chunks: str | None,
    encoding: str,
    dtype: str | None,
    layout: str | None,
    shards: str | None,
    color: str | None,
    stack_by: str,
    wavelengths: list[float] | None,
    variable: str | None,
    dims: str | None,
    no_georef: bool,
    resume: bool,
    overwrite: bool,
    as_json: bool = False,
) -> None:
    """Read SRC (files, a directory of images or a quoted glob) into the store OUT.

    One file becomes a (band, y, x) cube; several files, a directory or a glob become a
    stack of images (image, band, y, x); images of different sizes are padded with NaN
    (height/width per image; see cubepipe.storage.dataset). With --stack bands,
    single-band files of one size and grid (Landsat's B1..B11) become the bands of one
    (band, y, x) cube. Georeferencing (CRS, transform) is kept as a spatial_ref variable
    with x/y coordinates. Data are read and written chunk by chunk, so inputs larger than
    memory are fine. --invalid-value/-below/-above store a mask: a pixel is invalid
    where any band matches (e.g. --invalid-value 0 for a black outside).
    """
    sizes = parse_chunks(chunks)
    # Refuse an output that overlaps the input or exists (without --resume/--overwrite)
    # before reading anything, and hold its lock until the store is complete.
    with (
        claim_output(output, sources, resume=resume, overwrite=overwrite),
        contextlib.ExitStack() as stack,
    ):
        local = list(sources)
        if any(is_remote(src) for src in sources):  # input files on object storage
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="cubepipe-ingest-"))
            local = download_inputs(list(sources), tmp)
        # Open (and so validate) every input before the compute status line: a bad file
        # is then reported on stderr as a single line.
        stack_by = stack_by.lower()
        files = band_files(local) if stack_by == "bands" else expand_sources(local)[0]
        skipped = skipped_files(local)
        recorded = list(sources) if local != list(sources) else [str(f) for f in files]
        color = color.lower() if color else None
        options = {"variable": variable, "dims": dims, "georef": not no_georef}
        ds = open_input(
            local,
            format=fmt.lower(),
            chunks=sizes,
            dtype=dtype,
            layout=layout,
            color=color,
            stack=stack_by,
            wavelengths=wavelengths,
            **options,
        )
        ds = apply_invalid(ds, source=sources[0] if len(sources) == 1 else "the inputs")
        with state.compute():
            t0 = time.perf_counter()
            store = write_input(
                ds,
                output,
                inputs=recorded,
                encoding=encoding,
                chunks=sizes,
                resume=resume,
                overwrite=overwrite,
                device="cpu",  # reading and encoding run on the host
                params=ingest_params(
                    format=fmt.lower(),
                    dtype=dtype,
                    layout=layout,
                    color=color,
                    stack=stack_by,
                    wavelengths=wavelengths,
                    **options,
                )
                | invalid_params(),
                provenance=provenance(),
                durable=state.durable,
                shards=parse_shards(shards),
            )
            elapsed = time.perf_counter() - t0
    d = describe(store)
    cube = d["variables"]["cube"]
    if as_json:
        click.echo(
            json.dumps(
                {
                    "command": "ingest",
                    "inputs": recorded,
                    "output": str(store),
                    "files": len(files),
                    "skipped": [str(f) for f in skipped],
                    "dims": cube["dims"],
                    "shape": cube["shape"],
                    "dtype": cube["dtype"],
                    "encoding": cube["encoding"],
                    "bytes_in_memory": d["bytes_in_memory"],
                    "bytes_on_disk": d["bytes_on_disk"],
                    "images": d.get("images"),
                    "georef": d.get("georef"),
                    "seconds": round(elapsed, 3),
                },
                indent=2,
            )
        )
        return
    shape = ", ".join(f"{dim}={n}" for dim, n in zip(cube["dims"], cube["shape"], strict=True))
    click.echo(
        f"ingested {len(files)} file(s) -> {store}: cube ({shape}) {cube['dtype']}, "
        f"{human_bytes(d['bytes_in_memory'])} in memory, {human_bytes(d['bytes_on_disk'])} "
        f"on disk, {elapsed:.1f} s"
    )
    bands = _band_summary(ds) if stack_by == "bands" else None
    if bands:
        click.echo(f"bands: {bands}")
    if skipped:
        names = ", ".join(f.name for f in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        click.echo(f"skipped {len(skipped)} file(s) no reader recognises: {names}")
    images = d.get("images")
    if images and images["padded"]:
        (h0, h1), (w0, w1) = images["height"], images["width"]
        click.echo(
            f"images of different sizes (height {h0}..{h1}, width {w0}..{w1}) padded to "
            f"{h1}x{w1} with NaN; {images['filled']:.0%} of the stored pixels are image; "
            "cubepipe.storage.open_images(STORE) reads each back at its size"
        )
