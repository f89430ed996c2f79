"""``cubepipe compress`` and ``cubepipe reconstruct``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
import xarray as xr

from cubepipe.storage import InputError, history, open_cube, read_attrs

from ..pca import MODEL_VARS, fit_pca, pca_project, pca_reconstruct, reconstruction_metrics
from ..pca import summarize_metrics as _summarize_partials
from ._app import CliState, cli, pass_state
from ._io import in_argument, open_in, write_options, write_output


def _summarize(values: dict[str, Any]) -> dict[str, float]:
    return _summarize_partials(values["metrics"])


def _load_model(path: str) -> xr.Dataset:
    ds = open_cube(path)
    missing = [v for v in MODEL_VARS if v not in ds]
    if missing:
        raise InputError(
            f"{path} holds no fitted PCA model (missing {', '.join(missing)}); "
            "pass a store written by `cubepipe compress`"
        )
    return ds[list(MODEL_VARS)].compute()


@cli.command("compress")
@in_argument
@write_options
@click.option("--components", "-k", type=click.IntRange(min=1), help="Keep K components.")
@click.option(
    "--variance",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Keep the fewest components explaining this fraction of variance (e.g. 0.99).",
)
@click.option("--method", type=click.Choice(["pca", "ae", "vae"]), default="pca", show_default=True)
@click.option("--standardize", is_flag=True, help="PCA of per-band z-scores (correlation).")
@click.option("--whiten", is_flag=True, help="Scale scores to unit variance.")
@click.option("--model", "model_from", help="Apply the model fitted in this store; no fit.")
@pass_state
def compress_cmd(
    state: CliState,
    source: str,
    output: Path,
    resume: bool,
    overwrite: bool,
    chunks: str | None,
    components: int | None,
    variance: float | None,
    method: str,
    standardize: bool,
    whiten: bool,
    model_from: str | None,
) -> None:
    """Compress the bands of IN to K components per pixel (scores) and store the model.

    PCA reads IN twice in all: once to fit statistics and covariance together (float64,
    exact on data with an offset), once to project, write the scores and measure the
    reconstruction error (RMSE, PSNR, spectral angle), all recorded in OUT.
    """
    if method != "pca":
        raise InputError(
            f"--method {method} is not available yet; use --method pca (autoencoders are "
            "planned: issue 8)"
        )
    if model_from is None and (components is None) == (variance is None):
        raise InputError("give exactly one of --components K or --variance F (or --model)")
    ds = open_in(source)
    t0 = time.perf_counter()
    with state.compute():
        if model_from:
            model, stats = _load_model(model_from), None
        else:
            model, stats = fit_pca(
                ds,
                n_components=components,
                variance=variance,
                standardize=standardize,
                whiten=whiten,
            )
        fitted = time.perf_counter()
        scores = pca_project(ds, model)
        out = xr.Dataset({"scores": scores}, attrs=ds.attrs)
        out = out.merge(model.drop_vars("component"), compat="override", join="override")
        if stats is not None:
            out = out.assign({k: ("band", stats[k].values) for k in stats.data_vars})
        if "mask" in ds:
            out["mask"] = ds["mask"]
        k = model.sizes["component"]
        write_output(
            state,
            out,
            output,
            op="compress",
            params={
                "method": method,
                "components": k,
                "variance": variance,
                "standardize": standardize,
                "whiten": whiten,
                "model": model_from,
            },
            inputs=[source] + ([model_from] if model_from else []),
            base_chunks={"component": k},
            chunks=chunks,
            resume=resume,
            overwrite=overwrite,
            results={"metrics": reconstruction_metrics(ds, scores, model)},
            summarize=_summarize,
        )
    done = time.perf_counter()
    res = history(read_attrs(output))[-1].get("results", {})
    ratio = model["pca_explained_variance_ratio"].values
    click.echo(
        f"compress: {k} components explain {ratio.sum():.6f} of the variance; "
        f"reconstruction RMSE {res.get('rmse', float('nan')):.6g}, "
        f"PSNR {res.get('psnr_db', float('nan')):.2f} dB, "
        f"mean spectral angle {res.get('sam_deg', float('nan')):.4f} deg"
    )
    state.say(
        f"cubepipe compress: wrote {output} (fit {fitted - t0:.1f} s, project + write "
        f"{done - fitted:.1f} s)"
    )


@cli.command("reconstruct")
@in_argument
@write_options
@pass_state
def reconstruct_cmd(
    state: CliState, source: str, output: Path, resume: bool, overwrite: bool, chunks: str | None
) -> None:
    """Rebuild the bands from a store written by `compress` (scores + model)."""
    ds = open_in(source)
    if "scores" not in ds:
        raise InputError(f"{source} has no 'scores': pass a store written by `cubepipe compress`")
    model = ds[[v for v in MODEL_VARS if v in ds]]
    cube = pca_reconstruct(ds["scores"], model)
    out = xr.Dataset({"cube": cube}, attrs=ds.attrs)
    if "mask" in ds:
        out["mask"] = ds["mask"]
    with state.compute():
        write_output(
            state,
            out,
            output,
            op="reconstruct",
            inputs=[source],
            chunks=chunks,
            resume=resume,
            overwrite=overwrite,
        )
    state.say(f"cubepipe reconstruct: wrote {output}")
