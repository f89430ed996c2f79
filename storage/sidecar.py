"""The JSON sidecar that travels beside a scaled integer export (PNG/JPEG/16-bit).

An 8- or 16-bit image cannot hold signed floats, so ``cubepipe export --scale ...``
writes integers ``q`` and this sidecar says how to get the floats back::

    value = q * scale + offset          (|value - original| <= max_abs_error)

``cubepipe ingest`` finds the sidecar next to the image (``IMAGE.cubepipe.json``) and
restores float32 values from it, recording the error bound in the store.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .errors import FormatError

__all__ = ["SIDECAR_SUFFIX", "read_sidecar", "sidecar_path", "write_sidecar"]

SIDECAR_SUFFIX = ".cubepipe.json"
_VERSION = 1
_REQUIRED = ("scale", "offset", "max_abs_error", "bits")
#: A sidecar holds a few numbers per band: anything larger is not one.
_MAX_BYTES = 16 * 2**20


def sidecar_path(image: str | Path) -> Path:
    """``out/band.png -> out/band.png.cubepipe.json``."""
    p = Path(image)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def write_sidecar(image: str | Path, /, **fields: Any) -> Path:
    """Write the sidecar of ``image``; ``fields`` must include scale, offset,
    max_abs_error and bits (also: bands, nan_value, source, method)."""
    missing = [k for k in _REQUIRED if k not in fields]
    if missing:
        raise ValueError(f"sidecar needs {missing}")
    path = sidecar_path(image)
    path.write_text(json.dumps({"cubepipe_sidecar": _VERSION, **fields}, indent=2, default=str))
    return path


def read_sidecar(image: str | Path) -> dict[str, Any] | None:
    """The sidecar of ``image``, or None if there is none.

    A damaged one is a :class:`FormatError` naming the sidecar: not JSON, not an object,
    a required field missing, or a field of the wrong type or value (``scale`` and
    ``offset`` finite numbers or lists of them, ``max_abs_error`` >= 0, ``bits`` 8, 16 or
    32, ``nan_value`` an integer or null).
    """
    path = sidecar_path(image)
    if not path.is_file():
        return None
    if path.stat().st_size > _MAX_BYTES:
        raise FormatError(
            f"{path}: sidecar is {path.stat().st_size} bytes, more than a cubepipe sidecar "
            f"ever holds ({_MAX_BYTES}); delete it or re-export the image"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise FormatError(f"{path}: sidecar JSON is nested too deeply; delete or fix it") from None
    except ValueError as exc:  # UnicodeDecodeError included
        raise FormatError(f"{path}: sidecar is not valid JSON ({exc}); delete or fix it") from exc
    if not isinstance(data, dict) or data.get("cubepipe_sidecar") != _VERSION:
        raise FormatError(f"{path}: not a cubepipe sidecar (version {_VERSION} expected)")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise FormatError(f"{path}: sidecar lacks {', '.join(missing)}; re-export the image")
    for key in ("scale", "offset"):
        value = data[key]
        values = value if isinstance(value, list) else [value]
        if not values or not all(_finite(v) for v in values):
            _bad(path, key, value, "a finite number or a non-empty list of finite numbers")
    error = data["max_abs_error"]
    if not (_number(error) and error >= 0):  # inf allowed (clipped values), NaN not
        _bad(path, "max_abs_error", error, "a number >= 0")
    if not _integer(data["bits"]) or data["bits"] not in _BITS:
        _bad(path, "bits", data["bits"], "8, 16 or 32")
    nan_value = data.get("nan_value")
    if nan_value is not None and not _integer(nan_value):
        _bad(path, "nan_value", nan_value, "an integer code (or null)")
    return data


_BITS = (8, 16, 32)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def _finite(value: Any) -> bool:
    return _number(value) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bad(path: Path, key: str, value: Any, expected: str) -> None:
    shown = json.dumps(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    raise FormatError(
        f"{path}: sidecar field {key!r} must be {expected}, got {shown}; re-export the image "
        "(or delete the sidecar to ingest the raw integer codes)"
    )
