"""``cubepipe export STORE -o FILE [--bands ...] [--scale ...] [--bits ...]``."""

from __future__ import annotations

import contextlib
import json
import tempfile
import warnings
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import click

from cubepipe.storage.errors import CubepipeWarning, InputError
from cubepipe.storage.export import SUFFIXES, ExportJob, ExportResult, prepare_export
from cubepipe.storage.location import remote_store
from cubepipe.storage.remote import upload_files

from ._app import CliState, command
from ._io import LocalPath, json_option

SIDECAR = ".cubepipe.json"


def _parse_bands(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise InputError(
            f"bad --bands {text!r}: expected comma-separated band indices such as 0,3,7"
        ) from None


@command("export")
@click.argument("store", type=LocalPath(remote_ok=True))
@click.option(
    "-o",
    "--output",
    required=True,
    type=LocalPath(dir_okay=False, path_type=Path, remote_ok=True),
    help=f"Output file (or s3://...); its suffix picks the format ({', '.join(SUFFIXES)}).",
)
@click.option("--bands", metavar="0,3,7", help="Band indices to export, in order (default all).")
@click.option(
    "--scale",
    metavar="minmax|percentile:LO,HI|fixed:A,B",
    help="PNG/JPEG only (required there): the value range mapped onto the integer codes.",
)
@click.option(
    "--bits",
    type=click.Choice(["8", "16", "32", "64"]),
    help="PNG: 8 (default) or 16; JPEG: 8; TIFF/NPY: 32 or 64 (float width).",
)
@click.option(
    "--variable",
    help="Data variable to export (default: the store's main one: cube; scores for a "
    "compress output; else its one (..., band, y, x) variable, e.g. a filter's output).",
)
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@click.option("--allow-incomplete", is_flag=True, help="Read a store whose writer did not finish.")
@json_option
def export_cmd(
    state: CliState,
    store: str,
    output: Path | str,
    bands: str | None,
    scale: str | None,
    bits: str | None,
    variable: str | None,
    overwrite: bool,
    allow_incomplete: bool,
    as_json: bool = False,
) -> None:
    """Export STORE to a file other tools read.

    Without --variable the store's main variable is exported: cube, or the scores of
    a compress output (one page per component), or a filter's output variable.
    .tif/.npy hold the exact floats (TIFF: one page per band; read by tifffile, Pillow,
    OpenCV). A georeferenced store (from a GeoTIFF, ENVI map info or a NetCDF grid
    mapping) exports to .tif as a GeoTIFF: its bands (or components) as one
    raster with the store's CRS and transform, read by GDAL/rasterio (the geo extra). .png/.jpg are scaled integer previews: they need --scale and get a
    FILE.cubepipe.json sidecar from which q*scale+offset restores floats within its
    max_abs_error (code 0 = NaN). One band -> grey, three -> RGB, others -> one file per
    band (FILE_bNN.png); image/frame stores -> numbered files per image/frame.
    On object storage the files are made in a local temporary directory, then uploaded
    (every target is checked before the first upload).
    """
    with contextlib.ExitStack() as stack:
        if isinstance(output, str):  # object storage: export here, then upload
            remote_store(output)  # the backend is there, before any work
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cubepipe-export-")))
            local = tmp / PurePosixPath(urlsplit(output).path).name
        else:
            local = output
        job, result = _export(
            state, store, local, bands, scale, bits, variable, overwrite, allow_incomplete
        )
        uploaded: list[str] = []
        if isinstance(output, str):
            files = sorted(p for p in local.parent.iterdir() if p.is_file())
            parent = output.rsplit("/", 1)[0]
            uploaded = upload_files(files, parent, overwrite=overwrite)
            for url in uploaded:
                state.say(f"cubepipe export: uploaded {url}")
        if not as_json:
            click.echo(result.summary)
            return
        click.echo(
            json.dumps(
                {
                    "store": str(store),
                    "variable": str(job.var.name),
                    "format": job.fmt,
                    "files": [u for u in uploaded if not u.endswith(SIDECAR)]
                    if uploaded
                    else [str(f) for f in result],
                    "sidecars": [u for u in uploaded if u.endswith(SIDECAR)]
                    if uploaded
                    else [str(f) for f in result.sidecars],
                    "dtype": result.dtype,
                    "max_abs_error": result.max_abs_error,
                    "clipped": result.clipped,
                    "summary": result.summary,
                },
                indent=2,
            )
        )


def _export(
    state: CliState,
    store: str,
    output: Path,
    bands: str | None,
    scale: str | None,
    bits: str | None,
    variable: str | None,
    overwrite: bool,
    allow_incomplete: bool,
) -> tuple[ExportJob, ExportResult]:
    # Validate everything that needs no data first, so bad input is one stderr line.
    job = prepare_export(
        store,
        output,
        bands=_parse_bands(bands),
        scale=scale,
        bits=int(bits) if bits else None,
        variable=variable,
        overwrite=overwrite,
        allow_incomplete=allow_incomplete,
    )
    with state.compute(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CubepipeWarning)
        result = job.run()
    for w in caught:
        if issubclass(w.category, CubepipeWarning):
            click.echo(f"cubepipe: warning: {' '.join(str(w.message).split())}", err=True)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return job, result
