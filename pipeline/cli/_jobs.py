"""One implementation per operation, behind both ``cubepipe OP`` and a YAML step ``OP:``.

Each computing command is a plain function, its *job*: ``job(state, **params)`` opens
its inputs, calls the library (:mod:`cubepipe.pipeline`) and writes its output. The click
command of the same name only parses the command line into ``params`` and calls
:func:`run_job`; the pipeline runner (:mod:`cubepipe.pipeline.cli.runner`) parses a YAML
step into the same ``params`` and calls :func:`run_job` too, so no click command is ever
invoked by the runner and a step behaves exactly as the command does.

:func:`run_job` holds the output of a job that writes a store (see
:func:`~cubepipe.storage.store.claim_output`) and makes the invocation -- op and
parameters -- available to :func:`provenance` (what the store's history records and
``cubepipe run --resume`` compares) and to :func:`allow_nonfinite`.
"""

from __future__ import annotations

import contextvars
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cubepipe.storage.location import is_remote, is_url, local_path

__all__ = [
    "JOBS",
    "Invocation",
    "allow_nonfinite",
    "claims_output",
    "current_op",
    "invocation",
    "job",
    "job_paths",
    "provenance",
    "run_job",
]

#: op -> its job function ``job(state, **params)``; filled as the command modules load.
JOBS: dict[str, Callable[..., Any]] = {}
#: Parameters naming what a job reads, besides its input: an output must not overlap them.
_INPUT_PARAMS = ("source", "sources", "store", "stats_from", "stats", "model_from")
#: Parameters that say how to write or what to print, not what to compute: not part of
#: the recorded invocation.
NOT_COMPARED = ("output", "resume", "overwrite", "as_json", "explain")


@dataclass(frozen=True)
class Invocation:
    """The job running now: its op and the parameters it was given (defaults included)."""

    op: str
    params: Mapping[str, Any]


_current: contextvars.ContextVar[Invocation | None] = contextvars.ContextVar(
    "cubepipe_invocation", default=None
)


def job(op: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn`` as the job of ``op`` in :data:`JOBS`."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        JOBS[op] = fn
        return fn

    return register


def claims_output(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark job ``fn`` as one that writes a store to ``params["output"]``."""
    fn._cubepipe_claims = True  # type: ignore[attr-defined]
    return fn


def run_job(
    op: str,
    state: Any,
    params: Mapping[str, Any],
    *,
    jobs: Mapping[str, Callable[..., Any]] | None = None,
) -> Any:
    """Run the job of ``op`` (from ``jobs``, default :data:`JOBS`) with ``params``
    (parameter name -> value, as parsed).

    A job that writes a store (:func:`claims_output`) holds its output while it runs: an
    output that overlaps an input, or exists without ``resume``/``overwrite``, is refused
    before any input is opened, and a second writer of the same output fails at once.
    """
    fn = (JOBS if jobs is None else jobs)[op]
    params = _local_paths(params)
    token = _current.set(Invocation(op, dict(params)))
    try:
        kwargs = {k: v for k, v in params.items() if k != "allow_nonfinite"}
        if not getattr(fn, "_cubepipe_claims", False):
            return fn(state, **kwargs)
        from cubepipe.storage.store import claim_output  # noqa: PLC0415  (zarr: on use)

        with claim_output(
            params["output"],
            list(_inputs(params)),
            resume=bool(params.get("resume")),
            overwrite=bool(params.get("overwrite")),
        ):
            return fn(state, **kwargs)
    finally:
        _current.reset(token)


#: Parameters that name files or stores: ``file://`` URLs become paths; object storage
#: URLs are left for the storage layer, which reads stores there and refuses the rest.
_PATH_PARAMS = (*_INPUT_PARAMS, "output", "original")


def _file_url_to_path(value: Any) -> Any:
    if isinstance(value, str) and is_url(value) and not is_remote(value):
        return str(local_path(value, "a path"))
    return value


def _local_paths(params: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(params)
    for key in _PATH_PARAMS:
        if key not in out:
            continue
        value = out[key]
        if isinstance(value, list | tuple):
            out[key] = type(value)(_file_url_to_path(v) for v in value)
        else:
            out[key] = _file_url_to_path(value)
    return out


def _inputs(params: Mapping[str, Any]) -> Iterator[str]:
    for key in _INPUT_PARAMS:
        value = params.get(key)
        if isinstance(value, str | Path):
            yield str(value)
        elif isinstance(value, list | tuple):
            yield from (str(v) for v in value)


def job_paths() -> tuple[list[str], str | None]:
    """The local files the running job reads, and the output it writes (None outside a
    job): what the workers of a distributed scheduler must see (URLs left out)."""
    inv = _current.get()
    if inv is None:
        return [], None
    inputs = [p for p in _inputs(inv.params) if "://" not in p]
    out = inv.params.get("output")
    output = None if out is None or "://" in str(out) else str(out)
    return inputs, output


def current_op() -> str | None:
    """The op of the job running now (None outside one)."""
    inv = _current.get()
    return inv.op if inv is not None else None


def allow_nonfinite() -> bool:
    """Whether the running job was given ``--allow-nonfinite`` (``allow_nonfinite: true``)."""
    inv = _current.get()
    return bool(inv is not None and inv.params.get("allow_nonfinite"))


def invocation(op: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """How a job was invoked, JSON-ready, for its store's history entry.

    ``{"command": "standardize", "options": {"source": "a.zarr", "method": "zscore", ...},
    "cwd": "/data"}``: every parameter (defaults included) except ``output``, ``resume``,
    ``overwrite``, ``as_json`` and ``explain``.
    """
    options = {k: v for k, v in params.items() if k not in NOT_COMPARED}
    return {
        "command": op,
        "options": json.loads(json.dumps(options, default=str)),
        "cwd": os.getcwd(),
    }


def provenance() -> dict[str, Any]:
    """The running job's invocation (``{"cli": ...}``) for its store's history entry,
    which ``cubepipe run --resume`` compares with a step; empty outside a job."""
    inv = _current.get()
    return {"cli": invocation(inv.op, inv.params)} if inv is not None else {}
