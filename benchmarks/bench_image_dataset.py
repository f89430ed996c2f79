"""An image data set of mixed sizes: one process for the whole set vs one ingest per file.

Cases (each in its own process, on the same images):

- ``separate_ingests`` (baseline): ``cubepipe ingest FILE -o FILE.zarr`` once per image,
  each a new process: what a user had to do before issue 17 (then pool the statistics
  by hand, not timed here);
- ``one_ingest_cli``: ``cubepipe ingest DIR -o DS.zarr --color rgb``, one process;
- ``one_chain_cli``: that ingest, then ``cubepipe stats DS.zarr`` and ``cubepipe
  standardize DS.zarr -o Z.zarr`` (three processes: the whole job);
- ``one_chain_library``: the same three steps in this process
  (``ingest``, ``fit_stats``, ``standardize`` + ``write_cube``), imports not timed.

Sizes: ``photos24`` = the 12 images of ../shared/data/photos (PNG and JPEG, grey and RGB,
303x384 to 1411x1411) plus a 2/3-size RGB JPEG copy of each: 24 files; ``tiny`` (the
``--quick`` smoke run) = 2 generated images, commands run in process. No codec floor row
(``_common.floor_case``, issue 19): the inputs are images, not zarr chunks. Run ``python
benchmarks/bench_image_dataset.py``.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cubepipe.pipeline.cli import main as cli_main
from cubepipe.pipeline.stats.fit import fit_stats
from cubepipe.pipeline.stats.standardize import standardize
from cubepipe.storage import describe, open_cube, write_cube
from cubepipe.storage.ingest import ingest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import INPUTS, main

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos"


def _images(size: str) -> Path:
    return INPUTS / f"images-{size}"


def prepare(size: str) -> None:
    folder = _images(size)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if size == "tiny":
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (40, 30), dtype=np.uint8)).save(folder / "a.png")
        Image.fromarray(rng.integers(0, 256, (20, 50, 3), dtype=np.uint8)).save(folder / "b.jpg")
        return
    if not PHOTOS.is_dir():
        raise SystemExit(f"the photos are not at {PHOTOS}")
    for f in sorted(PHOTOS.iterdir()):
        shutil.copy(f, folder / f.name)
        with Image.open(f) as im:
            w, h = im.size
            small = im.convert("RGB").resize((w * 2 // 3, h * 2 // 3))
        small.save(folder / f"small_{f.stem}.jpg", quality=90)


def _cubepipe(size: str, *args: str) -> None:
    """One command: in a new process (as a user runs it), in process for ``tiny``."""
    if size == "tiny":
        with contextlib.redirect_stdout(io.StringIO()):
            code = cli_main(["--quiet", *args])
    else:
        exe = Path(sys.executable).with_name("cubepipe")
        code = subprocess.run([str(exe), "--quiet", *args], stdout=subprocess.DEVNULL).returncode
    if code:
        raise SystemExit(f"cubepipe {' '.join(args)} exited {code}")


def _filled(store: Path) -> dict[str, Any]:
    im = describe(store)["images"]
    return {"files": im["count"], "filled": round(im["filled"], 3)}


def separate_ingests(size: str, workdir: Path) -> dict[str, Any]:
    files = sorted(_images(size).iterdir())
    for f in files:
        _cubepipe(size, "ingest", str(f), "-o", str(workdir / f"{f.name}.zarr"))
    return {"files": len(files)}


def one_ingest_cli(size: str, workdir: Path) -> dict[str, Any]:
    _cubepipe(size, "ingest", str(_images(size)), "-o", str(workdir / "ds.zarr"), "--color", "rgb")
    return _filled(workdir / "ds.zarr")


def one_chain_cli(size: str, workdir: Path) -> dict[str, Any]:
    ds = workdir / "ds.zarr"
    _cubepipe(size, "ingest", str(_images(size)), "-o", str(ds), "--color", "rgb")
    _cubepipe(size, "stats", str(ds))
    _cubepipe(size, "standardize", str(ds), "-o", str(workdir / "z.zarr"))
    return _filled(ds)


def one_chain_library(size: str, workdir: Path) -> dict[str, Any]:
    ds = ingest(_images(size), workdir / "ds.zarr", color="rgb")
    stats = fit_stats(open_cube(ds)).compute()
    write_cube(standardize(open_cube(ds), stats), workdir / "z.zarr", op="standardize")
    return _filled(ds)


def summary(rows: list[dict[str, Any]]) -> str:
    lines = []
    for size in dict.fromkeys(r["size"] for r in rows):
        by = {r["case"]: r for r in rows if r["size"] == size}
        base = by["separate_ingests"]["seconds"]
        lines.append(
            f"{size}: {by['separate_ingests']['files']} separate ingests {base:.1f} s; one "
            f"ingest {by['one_ingest_cli']['seconds']:.1f} s; ingest + stats + standardize "
            f"{by['one_chain_cli']['seconds']:.1f} s as three commands, "
            f"{by['one_chain_library']['seconds']:.1f} s in one Python process; "
            f"{by['one_ingest_cli']['filled']:.0%} of the padded cube is image."
        )
    return "\n\n".join(lines)


if __name__ == "__main__":
    main(
        "bench_image_dataset",
        {
            "separate_ingests": separate_ingests,
            "one_ingest_cli": one_ingest_cli,
            "one_chain_cli": one_chain_cli,
            "one_chain_library": one_chain_library,
        },
        baseline="separate_ingests",
        sizes=("photos24",),
        quick_size="tiny",
        prepare=prepare,
        columns=("files", "filled"),
        summary=summary,
        notes="Issue 17: 24 files ingested one process each took 2 min 40 s for a user. "
        "The CLI cases include each command's start-up (Python, NumPy, dask, xarray, zarr "
        "imports), which is most of a separate ingest's time. The memory columns of the "
        "*_cli cases are the benchmark process's, not the commands' (they run as children). "
        "No codec floor row (issue 19 item 9): the inputs are PNG/JPEG files, not zarr "
        "chunks, and start-up and image decoding, not the store's codec, are the cost.",
    )
