"""``cubepipe filter``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from cubepipe.storage import history, read_attrs

from ..filters import (
    AXES,
    FILTER_ATTR,
    FORMS,
    METHODS,
    MODES,
    filter_cube,
    nan_spread,
    nan_spread_summary,
    parse_kernel,
)
from ._app import CliState, command
from ._io import (
    in_argument,
    invalid_params,
    json_option,
    mask_options,
    open_in,
    write_options,
    write_output,
)
from .explain import path_explanation


@command("filter")
@in_argument
@write_options
@click.option("--kernel", "-k", "kernel", required=True, metavar="SPEC", help=f"One of {FORMS}.")
@click.option("--axis", type=click.Choice(tuple(AXES)), default="spatial", show_default=True)
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default="auto",
    show_default=True,
    help="direct, rfft (real FFT; fft is the same), or auto: by kernel cost.",
)
@click.option("--mode", type=click.Choice(MODES), default="reflect", show_default=True)
@click.option("--mask-nan", is_flag=True, help="Treat NaN as invalid (normalized convolution).")
@click.option(
    "--min-support",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.1,
    show_default=True,
    help="Masked: least fraction of kernel weight on valid values for a valid output.",
)
@click.option("--fill", is_flag=True, help="Masked: also estimate invalid values where supported.")
@click.option("--variable", default="cube", show_default=True, help="Variable to filter.")
@click.option(
    "--explain",
    is_flag=True,
    help="Say which path (direct or rfft) the filter took and why (stderr).",
)
@json_option
@mask_options
def filter_cmd(
    state: CliState,
    source: str,
    output: Path,
    resume: bool,
    overwrite: bool,
    chunks: str | None,
    shards: str | None,
    kernel: str,
    axis: str,
    method: str,
    mode: str,
    mask_nan: bool,
    min_support: float,
    fill: bool,
    variable: str,
    explain: bool,
    as_json: bool,
) -> None:
    """Convolve each band plane (--axis spatial) or each spectrum (--axis spectral) of IN.

    Kernels: gaussian:SIGMA (truncated at 4 sigma), box:N, file:K.npy (1-D or 2-D),
    and Butterworth lowpass:F, highpass:F, bandpass:F1,F2 (F in cycles/pixel). Small
    kernels are applied directly, large ones by the real FFT, rfft (--method overrides;
    same result; --explain says which and why, `cubepipe explain fft` why rfft; --json
    prints a summary). Chunks get halos, so the result equals filtering whole planes. With
    --mask-nan or a store mask, NaN/masked values are left out by normalized
    convolution: conv(x*w, k) / conv(w, k), valid where the kernel sees at least
    --min-support of its weight on valid values. Boundary --mode as scipy.ndimage.
    --invalid-value/-below/-above mark pixels invalid (any band matching) in the mask
    first; without --mask-nan, NaN in IN spreads and a warning counts the pixels hit.
    """
    spec = parse_kernel(kernel)  # a bad spec fails before IN is opened
    ds = open_in(source)
    t0 = time.perf_counter()
    with state.compute():
        out = filter_cube(
            ds,
            spec,
            device=state.device,
            axis=axis,
            method=method,
            mode=mode,
            mask_nan=mask_nan,
            min_support=min_support,
            fill=fill,
            variable=variable,
        )
        report = out[variable].attrs[FILTER_ATTR]
        state.say(
            f"cubepipe filter: {report['kernel']} ({' x '.join(map(str, report['kernel_shape']))}"
            f"{', separable' if report['separable'] else ''}) along {axis} axis; method "
            f"{report['method']} ({report['method_reason']}); halo {report['halo']}; "
            f"mode {mode}{'; normalized (masked)' if report['masked'] else ''}"
        )
        if explain:  # asked for: printed even with --quiet
            click.echo(
                "\n".join(
                    f"cubepipe filter: {line}" for line in path_explanation(report).split("\n")
                ),
                err=True,
            )
        # Without --mask-nan, count where NaN spread, in the write's pass (not on resume:
        # that would recompute every chunk).
        counted = not mask_nan and not resume
        write_output(
            state,
            out,
            output,
            op="filter",
            params={k: v for k, v in report.items() if k != "method_reason"},
            inputs=[source],
            chunks=chunks,
            shards=shards,
            resume=resume,
            overwrite=overwrite,
            results={"nan_spread": nan_spread(ds, out, variable=variable)} if counted else None,
            summarize=nan_spread_summary if counted else None,
        )
    spread = history(read_attrs(output))[-1].get("results", {}) if counted else {}
    if counted:
        if spread.get("nonfinite_inputs"):
            click.echo(
                f"cubepipe filter: warning: {source} holds {spread['nonfinite_inputs']} "
                f"NaN/inf value(s); without --mask-nan they spread through the kernel: "
                f"{spread['nan_spread_pixels']} output pixel(s) whose input was finite came "
                "out NaN (--mask-nan leaves NaN out: normalized convolution)",
                err=True,
            )
    seconds = time.perf_counter() - t0
    state.say(f"cubepipe filter: wrote {output} in {seconds:.1f} s")
    if as_json:
        click.echo(
            json.dumps(_summary(source, output, out, report, variable, spread, seconds), indent=2)
        )


def _summary(
    source: str,
    output: Path,
    out: Any,
    report: dict[str, Any],
    variable: str,
    spread: dict[str, Any],
    seconds: float,
) -> dict[str, Any]:
    """``filter --json``: the schema of docs/cli-json.md (keys only ever added)."""
    var = out[variable]
    return {
        "command": "filter",
        "input": source,
        "output": str(output),
        "variable": variable,
        "kernel": report["kernel"],
        "kernel_shape": report["kernel_shape"],
        "separable": report["separable"],
        "method": report["method"],
        "method_reason": report["method_reason"],
        "axis": report["axis"],
        "mode": report["mode"],
        "halo": report["halo"],
        "masked": report["masked"],
        "mask_nan": report["mask_nan"],
        "min_support": report["min_support"],
        "fill": report["fill"],
        "invalid": invalid_params().get("invalid"),
        "nan_spread": (
            {k: spread[k] for k in ("nonfinite_inputs", "nan_spread_pixels") if k in spread} or None
        ),
        "dims": [str(d) for d in var.dims],
        "shape": [int(n) for n in var.shape],
        "dtype": str(var.dtype),
        "seconds": round(seconds, 3),
    }
