"""The JSON sidecar that travels beside a scaled integer export (PNG/JPEG/16-bit).

An 8- or 16-bit image cannot hold signed floats, so ``cubepipe export --scale ...``
writes integers ``q`` and this sidecar says how to get the floats back::

    value = q * scale + offset          (|value - original| <= max_abs_error)

``cubepipe ingest`` finds the sidecar next to the image (``IMAGE.cubepipe.json``) and
restores float32 values from it, recording the error bound in the store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import FormatError

__all__ = ["SIDECAR_SUFFIX", "read_sidecar", "sidecar_path", "write_sidecar"]

SIDECAR_SUFFIX = ".cubepipe.json"
_VERSION = 1
_REQUIRED = ("scale", "offset", "max_abs_error", "bits")


def sidecar_path(image: str | Path) -> Path:
    """``out/band.png -> out/band.png.cubepipe.json``."""
    p = Path(image)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def write_sidecar(image: str | Path, **fields: Any) -> Path:
    """Write the sidecar of ``image``; ``fields`` must include scale, offset,
    max_abs_error and bits (also: bands, nan_value, source, method)."""
    missing = [k for k in _REQUIRED if k not in fields]
    if missing:
        raise ValueError(f"sidecar needs {missing}")
    path = sidecar_path(image)
    path.write_text(json.dumps({"cubepipe_sidecar": _VERSION, **fields}, indent=2, default=str))
    return path


def read_sidecar(image: str | Path) -> dict[str, Any] | None:
    """The sidecar of ``image``, or None if there is none. A damaged one is an error."""
    path = sidecar_path(image)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise FormatError(f"{path}: sidecar is not valid JSON ({exc}); delete or fix it") from exc
    if not isinstance(data, dict) or data.get("cubepipe_sidecar") != _VERSION:
        raise FormatError(f"{path}: not a cubepipe sidecar (version {_VERSION} expected)")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise FormatError(f"{path}: sidecar lacks {', '.join(missing)}; re-export the image")
    return data
