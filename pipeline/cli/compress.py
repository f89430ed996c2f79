"""``cubepipe compress`` and ``cubepipe reconstruct``: options in, the library's
:func:`~cubepipe.pipeline.compression.api.prepare_compress` / :func:`~cubepipe.pipeline.compression.api.reconstruct`
called, the result written by :func:`~cubepipe.pipeline.cli._io.write_output`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ._app import CliState, command
from ._io import in_argument, json_option, mask_options, open_in, write_options, write_output

if TYPE_CHECKING:
    from cubepipe.pipeline.compression.api import Compressed

# The library (dask, xarray, zarr) is imported when the job runs, not for `--help`.


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
            type=click.IntRange(min=100),
            default=200_000,
            show_default=True,
            help="ae/vae: size of the random sample of valid pixels trained on (10 % held out "
            "to choose the epoch).",
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
            help="ae/vae: most passes over the sample (if training stops here while still "
            "improving, the summary says so: raise it).",
        ),
        click.option(
            "--patience",
            type=click.IntRange(min=1),
            default=10,
            show_default=True,
            help="ae/vae: stop after this many epochs without held-out improvement on the best "
            "trained epoch (the learning rate halves after a third of them); the best "
            "held-out epoch is kept, the start included, so a PCA start is never made worse.",
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


@command("compress")
@in_argument
@write_options
@click.option("--components", "-k", type=click.IntRange(min=1), help="Keep K components.")
@click.option(
    "--variance",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Keep the fewest components explaining this fraction of variance (e.g. 0.99).",
)
@click.option(
    "--method",
    type=click.Choice(["pca", "ae", "vae"]),
    help="[default: pca; with --model, the kind of model stored there]",
)
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
@mask_options
@json_option
def compress_cmd(
    state: CliState,
    source: str,
    output: Path,
    resume: bool,
    overwrite: bool,
    chunks: str | None,
    shards: str | None,
    model_from: str | None,
    method: str | None,
    as_json: bool = False,
    **options: Any,
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
    from cubepipe.pipeline.compression.api import prepare_compress  # noqa: PLC0415  (on use)
    from cubepipe.storage.store import history, read_attrs  # noqa: PLC0415

    if method is not None or model_from is None:
        options["method"] = method or "pca"  # else the stored model's kind decides
    ds = open_in(source, two_pass_on=state.scheduler_spec if model_from is None else None)
    t0 = time.perf_counter()
    with state.compute():
        job = prepare_compress(
            ds, model=model_from, device=state.device, progress=state.say, **options
        )
        t_fit = time.perf_counter()
        if options["sample"] is not None and model_from is None:
            fitted = job.dataset["pca_components"].attrs["sample_chunks"]
            state.say(
                f"cubepipe compress: fitted on {fitted} chunks "
                f"({options['sample']:g} of them, seed {options['seed']})"
            )
        write_output(
            state,
            job.dataset,
            output,
            op="compress",
            params=job.params,
            inputs=[source] + ([model_from] if model_from else []),
            base_chunks={"component": job.components},
            chunks=chunks,
            shards=shards,
            resume=resume,
            overwrite=overwrite,
            results=job.results,
            summarize=job.summarize,
        )
    done = time.perf_counter()
    res = history(read_attrs(output))[-1].get("results", {})
    if as_json:
        click.echo(json.dumps(_summary(job, res, source, output, model_from, t_fit - t0,
                                       done - t_fit), indent=2, default=float))  # fmt: skip
    else:
        _report(state, job, res)
    state.say(
        f"cubepipe compress: wrote {output} (fit {t_fit - t0:.1f} s, "
        f"{'project' if job.method == 'pca' else 'encode'} + write {done - t_fit:.1f} s)"
    )


def _summary(
    job: Compressed,
    res: dict[str, Any],
    source: str,
    output: Path,
    model_from: str | None,
    fit_s: float,
    write_s: float,
) -> dict[str, Any]:
    """``compress --json``: what the summary lines say, as one object."""
    ds = job.dataset
    ratio = ds["pca_explained_variance_ratio"].values if job.method == "pca" else None
    training = job.training or None
    return {
        "command": "compress",
        "input": str(source),
        "output": str(output),
        "model_from": model_from,
        "method": job.method,
        "components": int(job.components),
        "explained_variance_ratio": None if ratio is None else [float(v) for v in ratio],
        "explained_variance": None if ratio is None else float(ratio.sum()),
        "metrics": {k: res.get(k) for k in ("rmse", "psnr_db", "sam_deg", "kl_nats") if k in res},
        "training": None
        if training is None
        else {
            k: training.get(k)
            for k in (
                "heldout_mse_initial",
                "heldout_mse",
                "best_epoch",
                "epochs_run",
                "train_pixels",
                "stopped",
                "stop_reason",
            )
        },
        "seconds": {"fit": round(fit_s, 3), "write": round(write_s, 3)},
    }


def _report(state: CliState, job: Compressed, res: dict[str, Any]) -> None:
    """The summary line (stdout) and, after training, the held-out losses (stderr)."""
    measured = (
        f"reconstruction RMSE {res.get('rmse', float('nan')):.6g}, "
        f"PSNR {res.get('psnr_db', float('nan')):.2f} dB, "
        f"mean spectral angle {res.get('sam_deg', float('nan')):.4f} deg"
    )
    k, kind = job.components, job.method
    if kind == "pca":
        ratio = job.dataset["pca_explained_variance_ratio"].values
        click.echo(
            f"compress: {k} components explain {ratio.sum():.6f} of the variance; {measured}"
        )
        return
    spec = job.dataset[f"{kind}_mean"].attrs["cubepipe_model"]
    kl = f"; mean KL {res.get('kl_nats', float('nan')):.4g} nats/pixel" if kind == "vae" else ""
    click.echo(
        f"compress: {kind} ({spec['architecture']}) with {k} latent components; {measured}{kl}"
    )
    report = job.training
    if report:
        start = "PCA" if spec.get("init") == "pca" else "random"
        gain = report["heldout_mse"] / report["heldout_mse_initial"] - 1
        state.say(
            f"cubepipe compress: {kind} held-out MSE (standardized) "
            f"{report['heldout_mse_initial']:.6g} at the {start} start, "
            f"{report['heldout_mse']:.6g} kept ({gain:+.2%}; best epoch {report['best_epoch']} "
            f"of {report['epochs_run']}, {report['train_pixels']} training pixels)"
        )
        click.echo(f"compress: {kind} training stopped: {report['stopped']}")


@command("reconstruct")
@in_argument
@write_options
def reconstruct_cmd(
    state: CliState,
    source: str,
    output: Path,
    resume: bool,
    overwrite: bool,
    chunks: str | None,
    shards: str | None,
) -> None:
    """Rebuild the bands from a store written by `compress` (scores + model)."""
    from cubepipe.pipeline.compression.api import reconstruct  # noqa: PLC0415  (on use)

    out = reconstruct(source, device=state.device)
    with state.compute():
        write_output(
            state,
            out,
            output,
            op="reconstruct",
            inputs=[source],
            chunks=chunks,
            shards=shards,
            resume=resume,
            overwrite=overwrite,
        )
    state.say(f"cubepipe reconstruct: wrote {output}")
