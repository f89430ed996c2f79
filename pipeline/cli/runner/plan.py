"""Pipelines: a YAML list of steps, each run by the same job as ``cubepipe OP``.

A pipeline file is one mapping::

    description: free text (optional, ignored)
    device: cpu                  # optional defaults for the global options
    scheduler: threads           # (--device, --scheduler, --workers, --memory-limit)
    chunks: {y: 256, x: 256}     # --chunks for every step whose command takes it
    steps:
      - ingest: {in: scene.tif, out: scene.zarr}
      - stats: {}                # reads scene.zarr, writes its statistics into it
      - standardize: {out: z.zarr, method: zscore}
      - compress: {out: c.zarr, components: 3}
      - export: {in: z.zarr, out: z.tif}
      - report: {in: c.zarr, out: report.html, original: z.zarr}

Every step is a one-key mapping ``{op: {key: value, ...}}``. Keys are the command's long
option names without the dashes (``mask-nan`` and ``mask_nan`` both work); ``in`` is its
IN/STORE/SRC argument and ``out`` its ``-o/--output``. Flags take ``true``/``false``; a
list becomes a comma-separated value (``bands: [0, 3]``) and a mapping ``k=v`` pairs
(``chunks: {y: 256}``). A step's ``in`` defaults to the previous step's ``out``; a step
without ``out`` (``stats``) hands its input on; one that writes a file (``export``,
``report``) hands nothing on, so the next step names its ``in``. Relative paths are
relative to the current directory, as on the command line.

:func:`plan_pipeline` checks every step against its click command (names, required keys,
each value through the option's own ``type.convert``) before anything runs, and turns
each into the argument list of the command and the parameters it parses to (the key
handling lives in :mod:`~cubepipe.pipeline.cli.runner.keys`). Errors are one line naming
the file, the step (1-based), the op and the key.
:func:`~cubepipe.pipeline.cli.runner.pipeline.run_pipeline` then runs the ops' jobs (the
functions behind the commands, which call the library) in order.
"""

from __future__ import annotations

import glob
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import yaml

from cubepipe.pipeline.cli.runner.keys import (
    MAX_PIPELINE_BYTES,
    as_text,
    check_chunks,
    check_expanded_size,
    check_yaml_shape,
    convert_globals,
    convert_value,
    did_you_mean,
    global_options,
    key_table,
    kind,
    norm_key,
    option_args,
    parse_args,
    same_path,
    yaml_reason,
)
from cubepipe.storage.errors import InputError
from cubepipe.storage.location import is_remote, is_url, local_path

__all__ = ["OPS", "Pipeline", "Step", "load_pipeline", "plan_pipeline"]

#: The operations a step may name, in the order a pipeline usually uses them.
OPS = (
    "ingest",
    "stats",
    "standardize",
    "destandardize",
    "compress",
    "reconstruct",
    "filter",
    "export",
    "report",
)
#: Top-level keys besides the group's global options.
_TOP_KEYS = ("steps", "chunks", "description")


@dataclass(frozen=True)
class Step:
    """One validated step: the command ``op`` and the arguments it is invoked with."""

    number: int
    op: str
    args: tuple[str, ...]
    inputs: tuple[str, ...] = ()
    output: str | None = None
    output_is_file: bool = False
    #: The parameters the op's job runs with (name -> value, defaults included), parsed
    #: from ``args`` exactly as ``cubepipe OP ARGS`` parses them.
    params: Mapping[str, Any] = field(default_factory=dict)

    def command_line(self, global_args: Sequence[str] = ()) -> str:
        """The equivalent shell command, e.g. ``cubepipe stats a.zarr``."""
        return shlex.join(["cubepipe", *global_args, self.op, *self.args])


@dataclass(frozen=True)
class Pipeline:
    """A validated pipeline: the global options it sets and its steps."""

    source: str
    options: dict[str, Any] = field(default_factory=dict)
    steps: tuple[Step, ...] = ()


# -- loading and validation ----------------------------------------------------------------


def load_pipeline(path: str | Path, group: click.Group, *, overwrite: bool = False) -> Pipeline:
    """Read and validate the pipeline file at ``path`` (see :func:`plan_pipeline`).

    Raises
    ------
    InputError
        No file at ``path``, not valid YAML, or not a valid pipeline; one line.
    """
    p = Path(path)
    if not p.is_file():
        what = "not a regular file" if p.exists() else "not found"
        raise InputError(f"pipeline file {what}: {p}")
    size = p.stat().st_size
    if size > MAX_PIPELINE_BYTES:
        raise InputError(
            f"{p}: the pipeline file is {size} bytes; a pipeline is a short list of steps "
            f"(at most {MAX_PIPELINE_BYTES // 2**20} MiB): check that this is the right file"
        )
    try:
        text = p.read_text(encoding="utf-8")
        check_yaml_shape(text, str(p))
        doc = yaml.safe_load(text)
        check_expanded_size(doc, str(p))
    except yaml.YAMLError as exc:
        raise InputError(f"{p}: not valid YAML: {yaml_reason(exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot be read: {exc}") from None
    except RecursionError:
        raise InputError(f"{p}: the YAML is nested too deeply to be a pipeline") from None
    try:
        return plan_pipeline(doc, group, source=str(p), overwrite=overwrite)
    except RecursionError:
        raise InputError(f"{p}: the YAML is nested too deeply to be a pipeline") from None


def plan_pipeline(
    doc: Any, group: click.Group, *, source: str = "pipeline", overwrite: bool = False
) -> Pipeline:
    """Validate a parsed pipeline document against the commands of ``group``.

    Parameters
    ----------
    doc
        The document as ``yaml.safe_load`` returns it.
    group
        The click group whose commands the steps name (``cubepipe``'s ``cli``).
    source
        Name used in error messages (the file's path).
    overwrite
        Pass ``--overwrite`` to every step whose command takes it, unless the step sets
        ``overwrite`` itself.

    Returns
    -------
    Pipeline
        Global options (click parameter name -> value) and one :class:`Step` per step,
        with the full argument list of its command.

    Raises
    ------
    InputError
        The first problem found, as one line naming ``source``, the step number and op,
        and the key. Every step is checked before this returns, so nothing runs when any
        step is wrong.
    """
    if not isinstance(doc, Mapping):
        got = "an empty document" if doc is None else f"a {kind(doc)}"
        raise InputError(f"{source}: expected a mapping with a 'steps:' list at the top, got {got}")
    globals_ = global_options(group)
    valid_top = sorted([*_TOP_KEYS, *globals_])
    for key in doc:
        if norm_key(key) not in valid_top:
            raise InputError(
                f"{source}: unknown top-level key {key!r}{did_you_mean(key, valid_top)}; "
                f"valid keys: {', '.join(valid_top)}"
            )
    top = {norm_key(k): v for k, v in doc.items()}
    options = convert_globals(top, globals_, group, source)
    chunks = top.get("chunks")
    chunks_text = None
    if chunks is not None:
        chunks_text = check_chunks(as_text(chunks, f"{source}: top-level key 'chunks'"), source)
    steps = top.get("steps")
    if not isinstance(steps, list) or not steps:
        got = f"got a {kind(steps)}"
        if "steps" not in top:
            got = "but it is missing"
        elif isinstance(steps, list):
            got = "got an empty list"
        raise InputError(f"{source}: 'steps' must be a non-empty list of steps, {got}")
    ops = [op for op in OPS if op in group.commands]
    planned: list[Step] = []
    chain = _Chain()
    for number, raw in enumerate(steps, 1):
        step = _plan_step(number, raw, group, ops, chain, chunks_text, overwrite, source)
        planned.append(step)
    return Pipeline(source=source, options=options, steps=tuple(planned))


@dataclass
class _Chain:
    """What the next step reads when it names no ``in``."""

    current: str | None = None
    why_none: str = "there is no earlier step"
    produced: set[str] = field(default_factory=set)


def _plan_step(
    number: int,
    raw: Any,
    group: click.Group,
    ops: Sequence[str],
    chain: _Chain,
    chunks_text: str | None,
    overwrite: bool,
    source: str,
) -> Step:
    where = f"{source}: step {number}"
    if not isinstance(raw, Mapping) or len(raw) != 1:
        got = f"a mapping with {len(raw)} keys" if isinstance(raw, Mapping) else f"a {kind(raw)}"
        raise InputError(
            f"{where}: expected a mapping with one key, the op (e.g. '- stats: {{}}'), got {got}"
        )
    ((op_key, params),) = raw.items()
    op = norm_key(op_key)
    if op not in ops:
        missing = f" ('{op}' is not installed in this cubepipe)" if op in OPS else ""
        raise InputError(
            f"{where}: unknown op {op_key!r}{missing}{did_you_mean(op, ops)}; "
            f"valid ops: {', '.join(ops)}"
        )
    where = f"{where} ({op})"
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise InputError(
            f"{where}: expected a mapping of key: value after '{op}:', got a {kind(params)}"
        )
    cmd = group.commands[op]
    table = key_table(cmd)
    given: dict[str, Any] = {}
    for key, value in params.items():
        name = norm_key(key)
        if name not in table:
            raise InputError(
                f"{where}: unknown key {key!r}{did_you_mean(name, table)}; "
                f"valid keys: {', '.join(table)}"
            )
        if name in given:
            raise InputError(f"{where}: key {key!r} is given twice")
        if value is not None:
            given[name] = value
    if "chunks" in table and "chunks" not in given and chunks_text is not None:
        given["chunks"] = chunks_text
    if "overwrite" in table and "overwrite" not in given and overwrite:
        given["overwrite"] = True

    ctx = click.Context(cmd, info_name=op)
    options: list[str] = []
    positional: list[str] = []
    inputs: tuple[str, ...] = ()
    if "in" in table:
        inputs = _inputs(given, table["in"], chain, where)
        positional = [convert_value(v, table["in"], ctx, where, "in") for v in inputs]
    for name, param in table.items():
        if name == "in":
            continue
        if name not in given:
            if param.required:
                raise InputError(f"{where}: missing required key {name!r}")
            continue
        options += option_args(given[name], param, ctx, where, name)

    output = given.get("out")
    out_type = getattr(table.get("out"), "type", None)
    out_is_file = isinstance(out_type, click.Path) and not out_type.dir_okay
    if output is not None:
        output = str(output)
        if out_is_file:
            chain.current, chain.why_none = None, f"step {number} ({op}) writes a file, not a store"
        else:
            chain.current = output
        chain.produced.add(same_path(output))
    elif inputs and len(inputs) == 1:
        chain.current = inputs[0]  # stats-like: writes into its input, hands it on
    sep = ["--"] if any(a.startswith("-") for a in positional) else []
    args = tuple(options + sep + positional)
    return Step(
        number=number,
        op=op,
        args=args,
        inputs=inputs,
        output=output,
        output_is_file=out_is_file,
        params=parse_args(group, op, args, where),
    )


def _inputs(
    given: Mapping[str, Any], param: click.Parameter, chain: _Chain, where: str
) -> tuple[str, ...]:
    if "in" not in given:
        if chain.current is None:
            raise InputError(
                f"{where}: missing required key 'in' ({chain.why_none} whose output it could read)"
            )
        return (chain.current,)
    value = given["in"]
    many = param.nargs == -1
    if isinstance(value, list) and many:
        if not value:
            raise InputError(f"{where}: key 'in': the list of inputs is empty")
        items = [as_text(v, f"{where}: key 'in'", scalar=True) for v in value]
    else:
        items = [as_text(value, f"{where}: key 'in'", scalar=True)]
    for item in items:
        if is_remote(item):
            continue  # a store on object storage: the step's command reads it, or says why not
        if is_url(item):
            item = str(local_path(item, "an input"))  # a file:// URL
        if same_path(item) in chain.produced or os.path.exists(item) or glob.has_magic(item):
            continue
        raise InputError(f"{where}: key 'in': {item} does not exist and no earlier step writes it")
    return tuple(items)
