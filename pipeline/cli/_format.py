"""Plain-text rendering shared by commands (stable, greppable, no colour codes)."""

from __future__ import annotations

from typing import Any

__all__ = ["human_bytes", "render_info"]


def human_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _shape(values: list[int]) -> str:
    return "x".join(str(v) for v in values) if values else "scalar"


def _images_line(im: dict[str, Any] | None) -> list[str]:
    """The ``images`` line of ``cubepipe info`` for an image data set (else none)."""
    if not im:
        return []
    (h0, h1), (w0, w1) = im["height"], im["width"]
    sizes = f"height {h0}..{h1}, width {w0}..{w1}" if im["padded"] else f"all {h1}x{w1}"
    pad = (
        f"; padded to {h1}x{w1} with NaN, {im['filled']:.0%} of pixels are image"
        if im["padded"]
        else ""
    )
    more = ", ..." if im["count"] > len(im["names"]) else ""
    names = f": {', '.join(im['names'])}{more}" if im["names"] else ""
    return [f"images     {im['count']} ({sizes}{pad}){names}"]


def _georef_line(g: dict[str, Any] | None) -> list[str]:
    """The ``georef`` line of ``cubepipe info`` (none if not georeferenced)."""
    if not g:
        return []
    where = f", transform {g['transform']}" if g.get("transform") else ""
    return [f"georef     {g['crs']}{where}"]


def render_info(d: dict[str, Any]) -> str:
    """Human-readable form of :func:`cubepipe.storage.describe`'s dict."""
    state = d["state"]
    if state == "foreign":
        state = "complete? (no cubepipe provenance: written by another tool)"
    elif state == "incomplete":
        state = "INCOMPLETE (writer did not finish; rerun it with --resume, or --overwrite)"
    mem, disk = d["bytes_in_memory"], d["bytes_on_disk"]
    ratio = f", compression {mem / disk:.2f}x" if disk else ""
    lines = [
        f"store      {d['path']}",
        f"state      {state}" + (f" (cubepipe {d['version']})" if d.get("version") else ""),
        "dims       " + " ".join(f"{k}={v}" for k, v in d["dims"].items()),
        f"size       {human_bytes(mem)} in memory, {human_bytes(disk)} on disk{ratio}",
        *_images_line(d.get("images")),
        *_georef_line(d.get("georef")),
        "variables",
    ]
    width = max((len(n) for n in d["variables"]), default=4)
    for name, v in d["variables"].items():
        dims = "(" + ", ".join(v["dims"]) + ")"
        lines.append(
            f"  {name:<{width}}  {v['dtype']:<8} {dims:<24} {_shape(v['shape']):<16} "
            f"chunks {_shape(v['chunks']):<14} {'+'.join(v['codecs'])}  "
            f"{human_bytes(v['bytes_in_memory'])} -> {human_bytes(v['bytes_on_disk'])}"
        )
        for key, value in v.get("encoding", {}).items():
            lines.append(f"  {'':<{width}}  {key} = {value}")
    lines.append("fitted     " + (", ".join(d["fitted"]) if d["fitted"] else "(none)"))
    lines.append("history" + ("" if d["history"] else "    (none)"))
    for i, h in enumerate(d["history"], 1):
        inputs = ", ".join(h.get("inputs") or []) or "-"
        finished = h.get("finished") or "NOT FINISHED"
        lines.append(
            f"  {i}. {h.get('op')}  on {h.get('device')}  {h.get('started')} -> {finished}"
            f"  inputs: {inputs}"
        )
        if h.get("params"):
            params = ", ".join(f"{k}={v}" for k, v in h["params"].items())
            lines.append(f"     params: {params}")
    return "\n".join(lines)
