"""``cubepipe info STORE [--json]`` and ``cubepipe doctor``."""

from __future__ import annotations

import json
import os
import platform
from typing import Any

import click

from cubepipe.storage.errors import DeviceError

from ..backend import gpu_libraries, gpu_status, resolve_device
from ._app import cli
from ._format import render_info
from ._io import LocalPath, json_option


@cli.command()
@click.argument("store", type=LocalPath(path_type=str, remote_ok=True))
@json_option
def info(store: str, as_json: bool) -> None:
    """Describe STORE: dims, dtypes, chunks, codecs, size on disk, completion, history.

    Reads metadata only, so it is instant on any size of store.
    """
    from cubepipe.storage.info import describe  # noqa: PLC0415  (zarr: on use, not --help)

    d = describe(store)
    click.echo(json.dumps(d, indent=2) if as_json else render_info(d))


def _doctor_report() -> dict[str, Any]:
    import importlib.metadata as md  # noqa: PLC0415

    def version(dist: str) -> str | None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    report: dict[str, Any] = {
        "cubepipe": version("cubepipe"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "packages": {
            d: version(d) for d in ("numpy", "dask", "distributed", "zarr", "xarray", "torch")
        },
    }
    try:
        import cupy  # noqa: PLC0415  (what the device resolution itself will import)

        report["cupy"] = cupy.__version__
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # not installed, no driver, no device
        report["cupy"] = report.get("cupy")
        report["gpu"] = {"usable": False, "why": " ".join(f"{type(exc).__name__}: {exc}".split())}
        count = 0
    if count:
        ok, detail = gpu_status()
        report["gpu"] = {"usable": ok, "why": detail, "libraries": gpu_libraries()}
    elif "gpu" not in report:
        report["gpu"] = {"usable": False, "why": "CuPy sees no CUDA device"}
    auto = resolve_device("auto")
    report["auto_device"] = {"device": auto.name, "reason": auto.reason}
    return report


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON.")
def doctor(as_json: bool) -> None:
    """Say what this installation can compute on: versions, CPUs, and for a GPU one tiny
    call of each CUDA library cubepipe uses (NVRTC kernels, cuBLAS, cuFFT, cuSOLVER)
    checked against NumPy. Exit 2 if CuPy sees a GPU that cannot be used."""
    r = _doctor_report()
    if as_json:
        click.echo(json.dumps(r, indent=2))
    else:
        pk = ", ".join(f"{k} {v}" for k, v in r["packages"].items() if v)
        click.echo(f"cubepipe {r['cubepipe']} (Python {r['python']}; {pk})")
        click.echo(f"CPU: {r['cpus']} cores")
        gpu = r["gpu"]
        click.echo(f"GPU: {'usable' if gpu['usable'] else 'not usable'}: {gpu['why']}")
        for lib, why in gpu.get("libraries", {}).items():
            click.echo(f"  {lib:<9} {'ok' if not why else 'FAILED: ' + why}")
        click.echo(f"--device auto picks: {r['auto_device']['reason']}")
    if not r["gpu"]["usable"] and r["gpu"].get("libraries"):
        raise DeviceError(f"the GPU is not usable: {r['gpu']['why']}")
