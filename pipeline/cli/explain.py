"""``cubepipe explain fft``: why filtering goes through ``rfft`` rather than ``fft``, by how
much on this machine, and which path (direct or ``rfft``) each filter takes.

The numbers come from ``benchmarks/results/bench_filter.json`` (its ``*_rfft2_plane`` and
``*_fft2_plane`` cases: the same real planes through both transforms) when this is a
source checkout that has them, and from a quick timing on this machine now with
``--measure`` (or when there is no benchmark to read). :func:`path_explanation` is also
what ``cubepipe filter --explain`` prints.
"""

from __future__ import annotations

import json
import statistics
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np

from ..filters import DIRECT_MAX_COST, choose_method, make_kernel, parse_kernel
from ._app import cli
from ._io import json_option

__all__ = ["EXAMPLES", "bench_numbers", "explain", "kernel_paths", "measure", "path_explanation"]

#: Kernels ``explain fft`` shows the path of when none is given.
EXAMPLES = ("gaussian:1", "gaussian:3.75", "gaussian:4", "box:5", "box:40", "lowpass:0.25",
            "lowpass:0.1", "highpass:0.1", "bandpass:0.1,0.3")  # fmt: skip
#: The repository's benchmark table (exists in a source checkout, not in a wheel).
BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "bench_filter.json"
_LIBS = ("scipy", "numpy")

WHY = """\
Why rfft is faster than fft for real input

A real signal x[n] has a Hermitian spectrum: X[N-k] = conj(X[k]). Of the N outputs of a
complex FFT, N/2 - 1 are complex conjugates of others, so they carry no information.
rfft computes only the N//2 + 1 that are not (a length-N real transform can be done as
one complex transform of length N/2 plus O(N) work), and irfft turns them back into N
real values. On a (y, x) plane rfft2 halves the last axis, so compared with fft2/ifft2:
  - about half the arithmetic (~2.5 N log2 N instead of ~5 N log2 N flops a transform);
  - half the memory for the spectrum (y x (x//2 + 1) complex values instead of y x x),
    and the input stays real (numpy's fft2 first makes a complex128 copy of it);
  - the same result: irfft2 returns real values (the complex path computes an imaginary
    part that is rounding noise, ~1e-16, and throws it away).
How much depends on the library: numpy.fft.fft2 transforms a real plane as a complex one,
in full (so rfft is about 2x faster); scipy.fft.fft2 already computes a real plane's
forward transform by the real algorithm and fills in the mirrored half, so against scipy
the saving is mostly the inverse (ifft2 of the whole complex spectrum against irfft2 of
half of it) and the memory. cubepipe filters real data only, so its FFT path is always
rfftn/irfftn (scipy.fft on the CPU, cupyx.scipy.fft on a GPU)."""


def _time_pairs(
    first: Callable[[], Any], second: Callable[[], Any], budget: float, least: int
) -> tuple[float, float, int]:
    """Median seconds of ``first`` and ``second``, run alternately (so both see the same
    machine load) at least ``least`` times and until ``budget`` seconds have passed."""
    a: list[float] = []
    b: list[float] = []
    start = time.perf_counter()
    while len(a) < least or (time.perf_counter() - start < budget and len(a) < 50):
        for fn, out in ((first, a), (second, b)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(a), statistics.median(b), len(a)


def measure(
    size: int = 1024, *, budget: float = 0.35, spec: str = "gaussian:3.75"
) -> dict[str, Any]:
    """Time filtering one real ``size x size`` float64 plane by ``spec`` through
    ``rfft2 -> x kernel spectrum -> irfft2`` and through ``fft2 -> x -> ifft2(...).real``,
    with scipy.fft (one worker, as cubepipe's tasks use it) and numpy.fft, on this machine
    now: each pair alternately, at least 3 times and for about ``budget`` seconds a
    library; medians. Also checks that both give the same result."""
    import scipy.fft  # noqa: PLC0415

    plane = np.random.default_rng(0).standard_normal((size, size))
    k = make_kernel(spec, 2).taps.weights
    libs = []
    for name, mod, kw in (("scipy.fft", scipy.fft, {"workers": 1}), ("numpy.fft", np.fft, {})):
        k_real = mod.rfft2(k, s=plane.shape, **kw)
        k_full = mod.fft2(k, s=plane.shape, **kw)

        def real(mod=mod, kw=kw, kr=k_real) -> Any:
            return mod.irfft2(mod.rfft2(plane, **kw) * kr, s=plane.shape, **kw)

        def full(mod=mod, kw=kw, kf=k_full) -> Any:
            return mod.ifft2(mod.fft2(plane, **kw) * kf, **kw).real

        diff = float(np.abs(real() - full()).max())
        t_real, t_full, runs = _time_pairs(real, full, budget, 3)
        libs.append(
            {
                "library": name,
                "rfft_seconds": t_real,
                "fft_seconds": t_full,
                "speedup": t_full / t_real,
                "runs": runs,
                "max_abs_diff": diff,
            }
        )
    mib = 2.0**20
    return {
        "shape": [size, size],
        "dtype": "float64",
        "kernel": spec,
        "threads": 1,
        "libraries": libs,
        "rfft_spectrum_mib": size * (size // 2 + 1) * 16 / mib,
        "fft_spectrum_mib": size * size * 16 / mib,
    }


def bench_numbers(path: Path = BENCH) -> dict[str, Any] | None:
    """The rfft-vs-fft rows of a ``bench_filter.json`` (None if it has none)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    rows = {(r.get("size"), r.get("case")): r for r in doc.get("rows", [])}
    libs = []
    for (size, case), r in rows.items():
        lib = case.removesuffix("_rfft2_plane") if isinstance(case, str) else None
        if lib not in _LIBS or (size, f"{lib}_fft2_plane") not in rows:
            continue
        c = rows[size, f"{lib}_fft2_plane"]
        if not (r.get("fft_seconds", 0) > 0 and c.get("fft_seconds", 0) > 0):
            continue
        libs.append(
            {
                "library": f"{lib}.fft",
                "size": size,
                "shape": r.get("plane_shape"),
                "planes": r.get("planes"),
                "rfft_seconds": r["fft_seconds"],
                "fft_seconds": c["fft_seconds"],
                "speedup": c["fft_seconds"] / r["fft_seconds"],
                "rfft_spectrum_mb": r.get("spectrum_mb"),
                "fft_spectrum_mb": c.get("spectrum_mb"),
                "rfft_peak_anon_mb": r.get("peak_anon_mb"),
                "fft_peak_anon_mb": c.get("peak_anon_mb"),
            }
        )
    if not libs:
        return None
    return {"path": str(path), "machine": doc.get("machine", {}), "libraries": libs}


def kernel_paths(specs: Sequence[str], *, axis: str = "spatial") -> list[dict[str, Any]]:
    """What ``cubepipe filter --method auto`` does with each kernel spec along ``axis``."""
    out = []
    for spec in specs:
        k = make_kernel(parse_kernel(spec), 2 if axis == "spatial" else 1)
        method, reason = choose_method(k, "auto", masked=False)
        masked, _ = choose_method(k, "auto", masked=True)
        out.append(
            {
                "kernel": spec,
                "axis": axis,
                "kernel_shape": list(k.taps.shape),
                "separable": k.taps.factors is not None,
                "cost": k.taps.cost,
                "method": method,
                "method_masked": masked,
                "reason": reason,
            }
        )
    return out


def path_explanation(report: dict[str, Any]) -> str:
    """Why a filter (its ``cubepipe_filter`` report) took its path, in a few lines."""
    shape = " x ".join(map(str, report["kernel_shape"]))
    if report["separable"] and len(report["kernel_shape"]) > 1:
        kind = f"separable ({len(report['kernel_shape'])} 1-D passes)"
    else:
        kind = "one pass" if len(report["kernel_shape"]) == 1 else "dense (not separable)"
    lines = [
        f"path: {report['method']} ({report['method_reason']})",
        f"  kernel {report['kernel']}: {shape}, {kind}. Direct convolution costs a "
        "multiply-add per tap (of each 1-D pass) per output value, so it grows with the "
        "kernel; the rfft path costs O(log n) per value whatever the kernel size. auto takes "
        f"direct up to {DIRECT_MAX_COST} multiply-adds per value, rfft above.",
    ]
    if report["method"] == "rfft":
        lines.append(
            "  rfft: each tile (its halo included) goes through rfftn at a fast length, is "
            "multiplied by the kernel's spectrum and comes back through irfftn. The input is "
            "real, so its spectrum is Hermitian (X[N-k] = conj(X[k])) and rfft computes only "
            "the N//2 + 1 values that are not redundant: about half the arithmetic and half "
            "the memory of a complex fft, same result ('cubepipe explain fft --measure' times "
            "both on this machine)."
        )
    else:
        lines.append(
            "  direct: scipy.ndimage (cupyx.scipy.ndimage on a GPU) "
            + ("convolve1d along each axis." if report["separable"] else "convolve.")
        )
    if report["masked"]:
        lines.append(
            "  masked: normalized convolution conv(x*w, k) / conv(w, k), each term by the "
            "same path."
        )
    return "\n".join(lines)


@cli.group()
def explain() -> None:
    """Explain how cubepipe computes something, with this machine's numbers."""


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def _separable(p: dict[str, Any]) -> str:
    if len(p["kernel_shape"]) == 1:
        return "1-D"
    return "yes" if p["separable"] else "no"


def _para(text: str) -> str:
    return textwrap.fill(text, width=88, subsequent_indent="")


def _text(d: dict[str, Any]) -> str:
    lines = [WHY, ""]
    m = d["measured"]
    if m is not None:
        lines.append(
            _para(
                f"Measured on this machine now: one {m['shape'][0]} x {m['shape'][1]} float64 "
                f"plane filtered by {m['kernel']} (forward transform, times the kernel's "
                "spectrum, inverse), one thread, each pair run alternately, medians:"
            )
        )
        lines.append(
            f"  {'library':<10} {'rfft2+irfft2':>12} {'fft2+ifft2':>11} {'rfft faster':>12}"
            f" {'runs':>5} {'max |difference|':>17}"
        )
        for r in m["libraries"]:
            lines.append(
                f"  {r['library']:<10} {_ms(r['rfft_seconds']):>12} {_ms(r['fft_seconds']):>11}"
                f" {r['speedup']:>11.2f}x {r['runs']:>5} {r['max_abs_diff']:>17.1e}"
            )
        lines.append(
            f"  spectrum of the plane: {m['rfft_spectrum_mib']:.2f} MiB (rfft2) vs "
            f"{m['fft_spectrum_mib']:.2f} MiB (fft2)"
        )
        lines.append("")
    b = d["benchmark"]
    if b is not None:
        mach = b["machine"]
        lines.append(
            _para(
                f"bench_filter ({b['path']}; {mach.get('cpus', '?')} CPUs, "
                f"{mach.get('date', '?')}): the same real planes filtered through both "
                "transforms, one thread, each case in its own process, medians; seconds "
                "of the transforms, megabytes of one plane's spectrum and the process's "
                "peak memory (the planes loaded included):"
            )
        )
        lines.append(
            f"  {'library':<10} {'planes':>15} {'rfft2 s':>8} {'fft2 s':>8} {'rfft faster':>12}"
            f" {'spectrum MB':>13} {'peak MB':>14}"
        )
        for r in b["libraries"]:
            shape = "x".join(map(str, r["shape"] or [])) or "?"
            lines.append(
                f"  {r['library']:<10} {str(r['planes']) + ' x ' + shape:>15} "
                f"{r['rfft_seconds']:>8.2f} {r['fft_seconds']:>8.2f} {r['speedup']:>11.2f}x "
                f"{str(r['rfft_spectrum_mb']) + '/' + str(r['fft_spectrum_mb']):>13} "
                f"{str(r['rfft_peak_anon_mb']) + '/' + str(r['fft_peak_anon_mb']):>14}"
            )
        lines.append("")
    elif d["benchmark_note"]:
        lines += [_para(d["benchmark_note"]), ""]
    lines.append(
        _para(
            "Which path each filter takes (cubepipe filter --method auto): direct "
            f"convolution when the kernel costs at most {DIRECT_MAX_COST} multiply-adds per "
            "output value (separable kernels: the sum of their 1-D lengths; others: their "
            "nonzero taps), else rfft. Butterworth lowpass/highpass/bandpass kernels are "
            "wide and dense, so on planes they always take rfft."
        )
    )
    lines.append(f"  {'kernel':<18} {'axis':<9} {'shape':<11} {'separable':<10} {'cost':>6}  path")
    for p in d["paths"]:
        shape = " x ".join(map(str, p["kernel_shape"]))
        lines.append(
            f"  {p['kernel']:<18} {p['axis']:<9} {shape:<11} "
            f"{_separable(p):<10} {p['cost']:>6}  {p['method']}"
        )
    lines.append(
        _para(
            "Masked filtering (--mask-nan, --invalid-*, a store mask) takes the same rule "
            "per normalized term; --method direct|rfft forces either (same result to "
            "rounding); cubepipe filter --explain says which one a run took, --json "
            "records it."
        )
    )
    return "\n".join(lines)


@explain.command("fft")
@click.option(
    "--measure",
    "do_measure",
    is_flag=True,
    help="Also time rfft2 vs fft2 on this machine now (~1-2 s).",
)
@click.option("--size", type=click.IntRange(64, 4096), default=1024, show_default=True,
              help="Edge of the plane --measure transforms.")  # fmt: skip
@click.option("--kernel", "-k", "kernels", multiple=True, metavar="SPEC",
              help="Say which path this kernel takes (repeatable; default: examples).")  # fmt: skip
@click.option("--axis", type=click.Choice(("spatial", "spectral")), default="spatial",
              show_default=True)  # fmt: skip
@click.option("--bench", type=click.Path(path_type=Path), default=BENCH,
              help="bench_filter results to quote (default: the repository's).")  # fmt: skip
@json_option
def explain_fft(
    do_measure: bool, size: int, kernels: tuple[str, ...], axis: str, bench: Path, as_json: bool
) -> None:
    """Why rfft is faster than fft for real input, by how much on this machine (from
    bench_filter, and timed now with --measure), and which path each filter takes."""
    paths = kernel_paths(kernels or EXAMPLES, axis=axis)  # a bad spec fails before timing
    numbers = bench_numbers(bench)
    note = None
    if numbers is None:
        note = f"No rfft-vs-fft benchmark in {bench}; timed on this machine now instead."
    d = {
        "topic": "fft",
        "benchmark": numbers,
        "benchmark_note": note,
        "measured": measure(size) if do_measure or numbers is None else None,
        "direct_max_cost": DIRECT_MAX_COST,
        "paths": paths,
    }
    click.echo(json.dumps(d, indent=2) if as_json else _text(d))
