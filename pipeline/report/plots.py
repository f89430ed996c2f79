"""Rendering of ``cubepipe report``: the figures (PNG bytes) and the HTML page.

Figures are drawn with matplotlib's object API (:class:`matplotlib.figure.Figure` saved straight to
PNG by the Agg renderer), never through ``pyplot``: no backend is selected, no figure
registry is touched and nothing global changes, so reports can be made from any thread or
inside a user's session. Inputs are small in-memory NumPy arrays (strided quick-looks,
histogram counts); the data themselves never reach this module. :func:`render_page`
embeds the PNGs as base64 ``data:`` URIs beside inline CSS and HTML-escapes every text,
so the page is one file that needs nothing else.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr
from matplotlib import colormaps
from matplotlib.colors import Colormap, Normalize, TwoSlopeNorm
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from cubepipe.pipeline.report.error import ErrorSummary

__all__ = [
    "DIVERGING",
    "NAN_COLOUR",
    "ColourScale",
    "EmbeddedImage",
    "error_scale",
    "histogram_png",
    "image_png",
    "image_scale",
    "render_page",
    "scree_png",
]

#: Colour map of signed data: blue below 0, white at 0, red above.
DIVERGING = "RdBu_r"
#: Colour map of data with no negative values.
SEQUENTIAL = "viridis"
#: Colour map of error magnitudes.
ERROR = "magma"
#: Neutral colour of invalid (NaN or masked) pixels.
NAN_COLOUR = "#9e9e9e"
_DPI = 100


@dataclass(frozen=True)
class ColourScale:
    """How values map to colours: a colour map, limits and (diverging maps) the centre."""

    cmap: str
    vmin: float
    vmax: float
    vcenter: float | None = None

    def norm(self) -> Normalize:
        """A :class:`~matplotlib.colors.TwoSlopeNorm` centred at ``vcenter``, else linear."""
        if self.vcenter is not None:
            return TwoSlopeNorm(vcenter=self.vcenter, vmin=self.vmin, vmax=self.vmax)
        return Normalize(vmin=self.vmin, vmax=self.vmax)

    def colormap(self) -> Colormap:
        """The colour map, with NaN drawn in :data:`NAN_COLOUR`."""
        return colormaps[self.cmap].with_extremes(bad=NAN_COLOUR)


def image_scale(img: np.ndarray, *, has_negative: bool | None = None) -> ColourScale:
    """The colour scale of a quick-look.

    Signed data (``has_negative``, default: ``img`` holds a value < 0) get the diverging
    :data:`DIVERGING` map centred at 0 with symmetric limits ``±M``, ``M`` the larger of
    ``|1st|`` and ``|99th|`` percentile, so negatives are blue, positives red and 0 white.
    Data with no negative value get :data:`SEQUENTIAL` over the 1st..99th percentile.
    """
    finite = img[np.isfinite(img)]
    if finite.size == 0:
        return ColourScale(DIVERGING, -1.0, 1.0, 0.0)
    lo, hi = (float(v) for v in np.percentile(finite, [1, 99]))
    if has_negative is None:
        has_negative = bool(finite.min() < 0)
    if has_negative:
        m = max(abs(lo), abs(hi)) or float(np.abs(finite).max()) or 1.0
        return ColourScale(DIVERGING, -m, m, 0.0)
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    return ColourScale(SEQUENTIAL, lo, hi)


def error_scale(err: np.ndarray) -> ColourScale:
    """Sequential :data:`ERROR` map from 0 to the 99th percentile of ``err``."""
    finite = err[np.isfinite(err)]
    top = float(np.percentile(finite, 99)) if finite.size else 1.0
    return ColourScale(ERROR, 0.0, top if top > 0 else 1.0)


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight", pad_inches=0.05)
    return buf.getvalue()


def image_png(img: np.ndarray, scale: ColourScale, *, title: str, label: str = "") -> bytes:
    """A 2-D image ``(y, x)`` with a colour bar; NaN in :data:`NAN_COLOUR`."""
    ny, nx = img.shape
    width = 3.4
    fig = Figure(figsize=(width, max(1.2, (width - 0.6) * ny / max(nx, 1) + 0.5)), dpi=_DPI)
    ax = fig.add_subplot()
    shown = ax.imshow(
        np.ma.masked_invalid(img),
        cmap=scale.colormap(),
        norm=scale.norm(),
        interpolation="nearest",
        aspect="equal",
    )
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    bar = fig.colorbar(shown, ax=ax, shrink=0.85, pad=0.03)
    bar.ax.tick_params(labelsize=7)
    if label:
        bar.set_label(label, fontsize=7)
    return _png(fig)


def histogram_png(counts: np.ndarray, edges: np.ndarray, *, title: str) -> bytes:
    """Counts per bin as a filled step plot; a dashed line marks 0 when in range."""
    fig = Figure(figsize=(3.4, 2.1), dpi=_DPI)
    ax = fig.add_subplot()
    ax.stairs(counts, edges, fill=True, color="#4a78b5", alpha=0.85)
    if edges[0] < 0 < edges[-1]:
        ax.axvline(0.0, color="black", linewidth=0.7, linestyle="--")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("value", fontsize=7)
    ax.set_ylabel("count", fontsize=7)
    ax.tick_params(labelsize=7)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
    fig.tight_layout()
    return _png(fig)


def scree_png(spectrum: np.ndarray, kept: int, *, shown: int = 50) -> bytes:
    """Explained-variance ratio per component (bars) and its cumulative sum (line), the
    first ``shown`` components; a dashed line after the ``kept`` ones."""
    total = float(np.sum(spectrum))
    ratio = np.asarray(spectrum, dtype=np.float64) / total if total > 0 else spectrum * 0.0
    n = min(ratio.size, shown)
    x = np.arange(1, n + 1)
    fig = Figure(figsize=(6.0, 3.0), dpi=_DPI)
    ax = fig.add_subplot()
    ax.bar(x, ratio[:n], color="#4a78b5", label="explained variance ratio")
    ax.set_xlabel("component", fontsize=8)
    ax.set_ylabel("explained variance ratio", fontsize=8)
    twin = ax.twinx()
    twin.plot(x, np.cumsum(ratio)[:n], "o-", color="#c0392b", markersize=3, label="cumulative")
    twin.set_ylim(0, 1.02)
    twin.set_ylabel("cumulative", fontsize=8)
    if kept < n:
        ax.axvline(kept + 0.5, color="black", linestyle="--", linewidth=0.8)
    ax.set_title(f"scree plot ({kept} of {ratio.size} components kept)", fontsize=9)
    for a in (ax, twin):
        a.tick_params(labelsize=7)
    fig.tight_layout()
    return _png(fig)


# -- the page ----------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1200px;
padding:0 1.2em 3em;color:#1d1d1f;background:#fff}
h1{font-size:1.5em;margin:.8em 0 .2em}h2{font-size:1.2em;border-bottom:1px solid #ddd;
padding-bottom:.2em;margin-top:1.6em}nav a{margin-right:1em}
table{border-collapse:collapse;margin:.5em 0;font-size:12.5px}
th,td{border:1px solid #ddd;padding:2px 7px;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f3f3f5}
.grid{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;border:1px solid #e3e3e3;
padding:6px;border-radius:4px}figure img{display:block;max-width:100%}
.note{color:#555}code{background:#f3f3f5;padding:0 3px}
"""


@dataclass(frozen=True)
class EmbeddedImage:
    """A PNG for the page: its alt text, kind (data-kind) and extra data-* attributes."""

    alt: str
    png: bytes
    kind: str
    attrs: dict[str, str] = field(default_factory=dict)

    def img(self) -> str:
        data = base64.b64encode(self.png).decode("ascii")
        extra = "".join(f' data-{_e(k)}="{_e(v)}"' for k, v in self.attrs.items())
        return (
            f'<img src="data:image/png;base64,{data}" alt="{_e(self.alt)}" '
            f'data-kind="{_e(self.kind)}"{extra}>'
        )


def human_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return '<td class="n">-</td>'
    return f'<td class="n" data-value="{_e(repr(v))}">{_e(f"{v:.6g}")}</td>'


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    thead = f"<thead><tr>{th}</tr></thead>" if head else ""
    body = "".join("<tr>" + "".join(r) + "</tr>" for r in rows)
    return f'<table class="{_e(cls)}">{thead}<tbody>{body}</tbody></table>'


def _td(v: Any) -> str:
    return f"<td>{_e(v)}</td>"


def _stats_table(st: xr.Dataset) -> str:
    has_wl = "wavelength" in st.coords
    rows = []
    for i in range(st.sizes["band"]):
        row = [_td(st["band"].values[i] if "band" in st.coords else i)]
        if has_wl:
            row.append(_num(float(st["wavelength"].values[i])))
        row.append(f'<td class="n">{int(st["stats_count"].values[i])}</td>')
        row += [_num(float(st[f"stats_{k}"].values[i])) for k in ("mean", "std", "min", "max")]
        rows.append(row)
    head = ["band", *(["wavelength (nm)"] if has_wl else []), "count", "mean", "std", "min", "max"]
    return _table(head, rows, "stats")


def _history_table(entries: list[dict[str, Any]]) -> str:
    rows = []
    for i, h in enumerate(entries, 1):
        extra = {k: h[k] for k in ("params", "results") if h.get(k)}
        rows.append(
            [
                _td(i),
                _td(h.get("op")),
                _td(h.get("device")),
                _td(h.get("started")),
                _td(h.get("finished") or "NOT FINISHED"),
                _td(", ".join(h.get("inputs") or []) or "-"),
                f"<td><code>{_e(json.dumps(extra, default=str))}</code></td>",
            ]
        )
    head = ["#", "op", "device", "started", "finished", "inputs", "params / results"]
    return _table(head, rows, "history")


def _variables_table(info: dict[str, Any]) -> str:
    rows = [
        [
            _td(name),
            _td(v["dtype"]),
            _td("(" + ", ".join(v["dims"]) + ")"),
            _td(" x ".join(map(str, v["shape"])) or "scalar"),
            _td(" x ".join(map(str, v["chunks"])) or "-"),
            _td(" + ".join(v["codecs"])),
            _td(f"{human_bytes(v['bytes_in_memory'])} -> {human_bytes(v['bytes_on_disk'])}"),
            _td(", ".join(f"{k}={val}" for k, val in v.get("encoding", {}).items()) or "-"),
        ]
        for name, v in info["variables"].items()
    ]
    head = ["variable", "dtype", "dims", "shape", "chunks", "codecs", "memory -> disk", "encoding"]
    return _table(head, rows, "variables")


def _metrics(entries: list[dict[str, Any]], units: str = "data units") -> str:
    found = [h for h in entries if h.get("op") == "compress" and h.get("results")]
    if not found:
        return ""
    r = found[-1]["results"]
    rows = [
        [_td(label), _num(r.get(key))]
        for key, label in (
            ("rmse", f"RMSE ({units} of the input compress read)"),
            ("psnr_db", "PSNR (dB)"),
            ("sam_deg", "mean spectral angle (degrees)"),
            ("n_values", "values compared"),
        )
        if key in r
    ]
    return "<p>Reconstruction error recorded by <code>compress</code>:</p>" + _table(
        ["metric", "value"], rows, "metrics"
    )


def _error_section(error: EmbeddedImage, errors: ErrorSummary | None, original: str) -> str:
    """The reconstruction-error section: what was compared, the RMSEs, the map."""
    head = ""
    if errors is not None:
        ref = errors.reference
        rows = [[f'<td data-metric="rmse">{_e(f"RMSE ({ref.units})")}</td>', _num(errors.rmse)]]
        if errors.rmse_raw is not None:
            label = f"RMSE ({ref.raw_label})"
            rows.append([f'<td data-metric="rmse_raw">{_e(label)}</td>', _num(errors.rmse_raw)])
        rows.append(
            [f'<td data-metric="n_values">{_e("values compared")}</td>', _num(errors.n_values)]
        )
        raw = f"; {errors.rmse_raw:.6g} in {ref.raw_label}" if errors.rmse_raw is not None else ""
        head = (
            f"<p>Reconstruction compared with {_e(ref.label)}: RMSE "
            f"<strong>{_e(f'{errors.rmse:.6g}')}</strong> in {_e(ref.units)}{_e(raw)}, "
            f"over every valid value.</p>" + _table(["metric", "value"], rows, "errors")
        )
    return (
        f"<section id='error'><h2>Reconstruction error</h2>{head}<p class='note'>Map: "
        f"per-pixel RMS over bands of reconstruction minus <code>{_e(original)}</code> "
        f"({_e(error.attrs.get('units', 'data units'))}), at the quick-look's pixels; "
        f"RMSE there {_e(error.attrs['rmse'])}.</p><figure>{error.img()}</figure></section>"
    )


def render_page(
    *,
    title: str,
    info: dict[str, Any],
    variable: str,
    channel: str,
    n_channels: int,
    lead: dict[str, int],
    step: int,
    cards: list[tuple[EmbeddedImage, EmbeddedImage]],
    scree: EmbeddedImage | None,
    error: EmbeddedImage | None,
    original: str | None,
    tables: list[tuple[str, xr.Dataset]],
    generated: str,
    errors: ErrorSummary | None = None,
    fitted_units: str = "data units",
) -> str:
    """The whole page as one HTML string, every text HTML-escaped.

    Parameters
    ----------
    info
        :func:`cubepipe.storage.describe` of the store (summary, history, variables).
    variable, channel, n_channels, lead, step
        What the quick-looks show: the variable, its ``band``/``component`` dim and size,
        the leading dims (first entry shown) and the stride.
    cards
        (quick-look, histogram) per shown channel.
    scree, error
        The PCA scree plot and the reconstruction-error map, when there are any.
    original
        The path the error map compares with.
    errors
        The reconstruction error over every valid value (what it was compared with, in
        which units; raw units too when known).
    fitted_units
        The units of the error ``compress`` recorded (those of the data it read).
    tables
        (heading, ``stats_*`` Dataset over ``band``) per statistics table.
    generated
        Who made the page and when (the footer).
    """
    entries = info["history"]
    shown = len(cards)
    where = ", ".join(f"{d} 0 of {n}" for d, n in lead.items())
    summary = _table(
        [],
        [
            [_td("store"), _td(info["path"])],
            [_td("state"), _td(f"{info['state']} (cubepipe {info.get('version') or '-'})")],
            [_td("dims"), _td(", ".join(f"{k}={v}" for k, v in info["dims"].items()))],
            [
                _td("size"),
                _td(
                    f"{human_bytes(info['bytes_in_memory'])} in memory, "
                    f"{human_bytes(info['bytes_on_disk'])} on disk"
                ),
            ],
            [_td("shown"), _td(f"{variable!r}: {shown} of {n_channels} {channel}s")],
            [_td("fitted"), _td(", ".join(info["fitted"]) or "(none)")],
        ],
        "summary",
    )
    grid = "".join(f"<figure>{look.img()}{hist.img()}</figure>" for look, hist in cards)
    section = "Bands" if channel == "band" else "Components"
    pixels = "every pixel" if step == 1 else f"1 pixel in {step} along y and x (strided)"
    look_note = _e(
        f"Quick-looks of {where or 'the data'}: {pixels}. Signed data: blue < 0 < red, white "
        "at 0 (a diverging map centred at 0); data with no negative value: viridis. Grey: "
        f"invalid (NaN or masked). Histograms: every value of the {channel}"
        + "".join(f" in all {n} {d}s" for d, n in lead.items())
        + ", from its min to its max."
    )
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<header><h1>{_e(title)}</h1><p class='note'>{_e(info['path'])}</p></header>",
        "<nav><a href='#summary'>Summary</a><a href='#data'>"
        + section
        + "</a>"
        + ("<a href='#pca'>PCA</a>" if scree or _metrics(entries, fitted_units) else "")
        + ("<a href='#error'>Error</a>" if error or original else "")
        + "<a href='#statistics'>Statistics</a><a href='#history'>History</a>"
        + "<a href='#variables'>Variables</a></nav>",
        f"<section id='summary'><h2>Summary</h2>{summary}</section>",
        f"<section id='data'><h2>{section}</h2><p class='note'>{look_note}</p>",
        f"<div class='grid'>{grid}</div></section>",
    ]
    if scree or _metrics(entries, fitted_units):
        out.append(f"<section id='pca'><h2>PCA</h2>{scree.img() if scree else ''}")
        out.append(f"{_metrics(entries, fitted_units)}</section>")
    if error is not None:
        out.append(_error_section(error, errors, str(original)))
    out.append("<section id='statistics'><h2>Statistics</h2>")
    out += [f"<h3>{_e(label)}</h3>{_stats_table(st)}" for label, st in tables]
    out.append("</section>")
    out.append(f"<section id='history'><h2>History</h2>{_history_table(entries)}</section>")
    out.append(f"<section id='variables'><h2>Variables</h2>{_variables_table(info)}</section>")
    out.append(f"<footer><p class='note'>Generated by {_e(generated)}.</p></footer>")
    out.append("</body></html>\n")
    return "\n".join(out)
