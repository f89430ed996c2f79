"""``cubepipe compress`` and ``cubepipe reconstruct``."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import click
import xarray as xr
from click.core import ParameterSource

from cubepipe.storage import InputError, history, open_cube, read_attrs

from ..autoencoder_apply import ae_project, ae_reconstruct, model_kind, summarize_ae_metrics
from ..backend import to_device
from ..pca import MODEL_VARS, fit_pca, pca_encode, pca_reconstruct
from ..pca import summarize_metrics as _summarize_partials
from ._app import CliState, cli, pass_state
from ._io import in_argument, open_in, write_options, write_output


def _summarize(values: dict[str, Any]) -> dict[str, float]:
    return _summarize_partials(values["metrics"])


def _load_model(path: str) -> tuple[str, xr.Dataset]:
    """The kind (``pca``, ``ae``, ``vae``) and the loaded model variables of a store."""
    ds = open_cube(path)
    kind = model_kind(ds)
    if kind in ("ae", "vae"):
        from ..autoencoder import take_ae_model  # noqa: PLC0415

        return kind, take_ae_model(ds, where=path)
    missing = [v for v in MODEL_VARS if v not in ds]
    if missing:
        raise InputError(
            f"{path} holds no fitted PCA model (missing {', '.join(missing)}) and no "
            "autoencoder (ae_*/vae_*); pass a store written by `cubepipe compress`"
        )
    return "pca", ds[list(MODEL_VARS)].compute()


def _hidden(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in value.split(",") if w.strip())
    except ValueError:
        widths = ()
    if not widths or min(widths) < 1:
        raise click.BadParameter(f"expected positive widths like 64,32; got {value!r}")
    return widths


def _ae_options(f: Any) -> Any:
    """The options of ``--method ae|vae`` (ignored by PCA and by ``--model``)."""
    options = [
        click.option(
            "--architecture",
            type=click.Choice(["mlp", "conv"]),
            default="mlp",
            show_default=True,
            help="ae/vae: fully connected, or 1-D convolutions over the bands.",
        ),
        click.option(
            "--hidden",
            default="64,32",
            show_default=True,
            callback=_hidden,
            help="ae/vae: hidden layer widths of the encoder (the decoder mirrors them).",
        ),
        click.option(
            "--activation",
            type=click.Choice(["silu", "tanh", "relu"]),
            default="silu",
            show_default=True,
            help="ae/vae: activation function.",
        ),
        click.option(
            "--train-pixels",
            type=click.IntRange(min=10),
            default=200_000,
            show_default=True,
            help="ae/vae: size of the random sample of valid pixels trained on (10 % held out).",
        ),
        click.option(
            "--init",
            type=click.Choice(["pca", "random"]),
            default="pca",
            show_default=True,
            help="ae/vae: start from PCA (never worse than PCA on held-out pixels) or random.",
        ),
        click.option(
            "--epochs",
            type=click.IntRange(min=0),
            default=50,
            show_default=True,
            help="ae/vae: most passes over the sample.",
        ),
        click.option(
            "--patience",
            type=click.IntRange(min=1),
            default=5,
            show_default=True,
            help="ae/vae: stop after this many epochs without held-out improvement.",
        ),
        click.option(
            "--batch-size",
            type=click.IntRange(min=1),
            default=1024,
            show_default=True,
            help="ae/vae: pixels per training step (fewer on small samples: >= 64 steps an epoch).",
        ),
        click.option(
            "--learning-rate",
            type=click.FloatRange(min=0, min_open=True),
            default=1e-3,
            show_default=True,
            help="ae/vae: Adam learning rate.",
        ),
        click.option(
            "--beta",
            type=click.FloatRange(min=0),
            default=1.0,
            show_default=True,
            help="vae: weight of the KL term.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


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
@click.option(
    "--sample",
    type=click.FloatRange(0, 1, min_open=True),
    help="PCA: fit on this random fraction of the chunks (read only those); project all.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random choices.")
@_ae_options
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
    sample: float | None,
    seed: int,
    **ae_options: Any,
) -> None:
    """Compress the bands of IN to K components per pixel (scores) and store the model.

    PCA reads IN twice in all: once to fit statistics and covariance together (float64,
    exact on data with an offset), once to project, write the scores and measure the
    reconstruction error (RMSE, PSNR, spectral angle), all recorded in OUT.

    --method ae|vae trains a per-pixel autoencoder (PyTorch: pip install 'cubepipe[ae]')
    on a random sample of valid pixels, starting from PCA, and stores its weights in OUT;
    the same two reads, and the same outputs and metrics (a VAE's scores are its latent
    means). With --model, the kind of model stored there decides the method.
    """
    fitted = None
    if model_from:
        kind, fitted = _load_model(model_from)
        given = click.get_current_context().get_parameter_source("method")
        if given == ParameterSource.COMMANDLINE and method != kind:
            raise InputError(
                f"--method {method} does not match the {kind} model stored in {model_from}; "
                "leave --method out to apply it"
            )
        method = kind
    if method != "pca":
        if sample is not None:
            raise InputError("--sample applies to --method pca; use --train-pixels N")
        _compress_ae(
            state,
            source,
            output,
            write={"resume": resume, "overwrite": overwrite, "chunks": chunks},
            kind=method,
            fitted=fitted,
            model_from=model_from,
            components=components,
            variance=variance,
            standardize=standardize,
            whiten=whiten,
            options={**ae_options, "seed": seed},
        )
        return
    if model_from is None and (components is None) == (variance is None):
        raise InputError("give exactly one of --components K or --variance F (or --model)")
    ds = open_in(source, two_pass_on=state.scheduler_spec if fitted is None else None)
    t0 = time.perf_counter()
    with state.compute():
        if fitted is not None:
            model, stats = fitted, None
        else:
            model, stats = fit_pca(
                ds,
                n_components=components,
                variance=variance,
                standardize=standardize,
                whiten=whiten,
                sample=sample,
                seed=seed,
            )
            if sample is not None:
                state.say(
                    f"cubepipe compress: fitted on {model['pca_components'].attrs['sample_chunks']}"
                    f" chunks ({sample:g} of them, seed {seed})"
                )
                stats = None  # statistics of a sample are not the input's: not saved
        fitted = time.perf_counter()
        scores, partials = pca_encode(ds, model)
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
                "sample": sample,
                "seed": seed if sample is not None else None,
            },
            inputs=[source] + ([model_from] if model_from else []),
            base_chunks={"component": k},
            chunks=chunks,
            resume=resume,
            overwrite=overwrite,
            results={"metrics": partials},
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


def _summarize_ae(values: dict[str, Any], *, kind: str, report: dict[str, Any]) -> dict:
    out: dict[str, Any] = summarize_ae_metrics(values["metrics"], kind=kind)
    if report:
        out["training"] = report
    return out


def _compress_ae(
    state: CliState,
    source: str,
    output: Path,
    *,
    write: dict[str, Any],
    kind: str,
    fitted: xr.Dataset | None,
    model_from: str | None,
    components: int | None,
    variance: float | None,
    standardize: bool,
    whiten: bool,
    options: dict[str, Any],
) -> None:
    """``compress --method ae|vae``: fit (or take ``fitted``), encode, write, report."""
    if fitted is None:
        if variance is not None:
            raise InputError(
                f"--variance chooses K for PCA only; give --components K with --method {kind}"
            )
        if components is None:
            raise InputError(f"give --components K (the bottleneck width) for --method {kind}")
        if whiten:
            raise InputError(
                "--whiten applies to --method pca only (autoencoder latents start whitened)"
            )
    ds = open_in(source, two_pass_on=state.scheduler_spec if fitted is None else None)
    t0 = time.perf_counter()
    report: dict[str, Any] = {}
    with state.compute():
        if fitted is None:
            from ..autoencoder import fit_autoencoder  # noqa: PLC0415

            model, stats, report = fit_autoencoder(
                ds,
                n_components=components,
                kind=kind,
                standardize=standardize,
                device=state.device.name,
                progress=state.say,
                **options,
            )
            model_vars = model
        else:
            model, stats, model_vars = fitted, None, fitted
        t_fit = time.perf_counter()
        scores, partials = ae_project(to_device(ds, state.device), model)
        out = xr.Dataset({"scores": scores}, attrs=ds.attrs)
        out = out.assign({name: model_vars[name].variable for name in model_vars.data_vars})
        if stats is not None:
            out = out.assign({k: ("band", stats[k].values) for k in stats.data_vars})
        if "mask" in ds:
            out["mask"] = ds["mask"]
        k = scores.sizes["component"]
        params = {"method": kind, "components": k, "model": model_from}
        if fitted is None:
            params.update(standardize=standardize, **options)
            params["hidden"] = list(options["hidden"])
        write_output(
            state,
            out,
            output,
            op="compress",
            params=params,
            inputs=[source] + ([model_from] if model_from else []),
            base_chunks={"component": k},
            results={"metrics": partials},
            summarize=functools.partial(_summarize_ae, kind=kind, report=report),
            **write,
        )
    done = time.perf_counter()
    res = history(read_attrs(output))[-1].get("results", {})
    spec = model[f"{kind}_mean"].attrs["cubepipe_model"]
    kl = f"; mean KL {res.get('kl_nats', float('nan')):.4g} nats/pixel" if kind == "vae" else ""
    click.echo(
        f"compress: {kind} ({spec['architecture']}) with {k} latent components; "
        f"reconstruction RMSE {res.get('rmse', float('nan')):.6g}, "
        f"PSNR {res.get('psnr_db', float('nan')):.2f} dB, "
        f"mean spectral angle {res.get('sam_deg', float('nan')):.4f} deg{kl}"
    )
    if report:
        state.say(
            f"cubepipe compress: {kind} held-out MSE (standardized) "
            f"{report['heldout_mse_initial']:.6g} before training "
            f"({'PCA' if spec.get('init') == 'pca' else 'random'}), "
            f"{report['heldout_mse']:.6g} after (best epoch {report['best_epoch']} of "
            f"{report['epochs_run']}, {report['train_pixels']} training pixels)"
        )
    state.say(
        f"cubepipe compress: wrote {output} (fit {t_fit - t0:.1f} s, encode + write "
        f"{done - t_fit:.1f} s)"
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
    if model_kind(ds) in ("ae", "vae"):
        from ..autoencoder import take_ae_model  # noqa: PLC0415

        model = take_ae_model(ds, where=source)
        cube = ae_reconstruct(to_device(ds["scores"], state.device), model)
    else:
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
