"""``cubepipe run PIPELINE.yaml``: run a YAML pipeline of cubepipe commands."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from cubepipe.pipeline.cli.runner.pipeline import (
    Pipeline,
    load_pipeline,
    resume_action,
    run_pipeline,
)
from cubepipe.storage.errors import InputError

from ..backend import resolve_device
from ..scheduling import DEFAULT_CONNECT_TIMEOUT, check_memory_limit, check_scheduler, scheduler
from ._app import CliState, cli
from ._io import LocalPath


def _step_state(ctx: click.Context, state: CliState, pipeline: Pipeline) -> CliState:
    """The state the steps run with: the pipeline's top-level device/scheduler/workers/
    memory-limit, unless given on the command line (which wins)."""
    root = ctx.find_root()
    changes: dict[str, Any] = {}
    for name, value in pipeline.options.items():
        if root.get_parameter_source(name) == ParameterSource.COMMANDLINE:
            continue
        try:
            if name == "device":
                changes["device"] = resolve_device(value)
            elif name == "scheduler_spec":
                changes["scheduler_spec"] = check_scheduler(value)
            elif name == "memory_limit":
                changes[name] = check_memory_limit(value)
            elif name == "workers":
                changes[name] = value
        except InputError as exc:
            key = "scheduler" if name == "scheduler_spec" else name
            raise InputError(f"{pipeline.source}: top-level key {key!r}: {exc}") from None
    return dataclasses.replace(state, **changes)


def _global_args(state: CliState) -> list[str]:
    args = ["--device", state.device.name]
    if state.scheduler_spec not in ("threads", "threaded"):
        args += ["--scheduler", state.scheduler_spec]
    if state.workers:
        args += ["--workers", str(state.workers)]
    if state.memory_limit:
        args += ["--memory-limit", state.memory_limit]
    if state.connect_timeout != DEFAULT_CONNECT_TIMEOUT:
        args += ["--connect-timeout", f"{state.connect_timeout:g}"]
    if state.durable:
        args += ["--durable"]
    return args


def _dry_run(pipeline: Pipeline, global_args: list[str], resume: bool) -> None:
    """Print each step's command; with --resume, what the resumed run would do instead."""
    for step in pipeline.steps:
        if not resume:
            click.echo(step.command_line(global_args))
            continue
        action = resume_action(step, cli)  # raises where the real run would refuse
        if action.kind == "skip":
            click.echo(f"# step {step.number} ({step.op}) skipped: {action.note}")
        else:
            click.echo(dataclasses.replace(step, args=action.args).command_line(global_args))


@cli.command("run")
@click.argument("pipeline_file", metavar="PIPELINE.yaml", type=LocalPath(path_type=Path))
@click.option(
    "--dry-run", is_flag=True, help="Check PIPELINE.yaml and print each step's command only."
)
@click.option(
    "--resume",
    is_flag=True,
    help="Finish an interrupted run: skip steps whose output store is complete and was "
    "made by the same command and options, resume an incomplete one (--resume), re-make "
    "files; refuse outputs made otherwise.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Pass --overwrite to every step that takes it (unless the step sets overwrite).",
)
@click.pass_context
def run_cmd(
    ctx: click.Context, pipeline_file: Path, dry_run: bool, resume: bool, overwrite: bool
) -> None:
    """Run the steps of PIPELINE.yaml in order; each is the same as `cubepipe OP ...`.

    \b
    device: cpu                  # optional defaults: device, scheduler, workers,
    chunks: {y: 256, x: 256}     # memory_limit, chunks (for steps that take --chunks)
    steps:
      - ingest: {in: scene.tif, out: scene.zarr}
      - stats: {}
      - standardize: {out: z.zarr, method: zscore}
      - compress: {out: c.zarr, components: 3}
      - report: {in: c.zarr, out: report.html, original: z.zarr}

    Ops: ingest, stats, standardize, destandardize, compress, reconstruct, filter, export,
    report. Keys are the command's option names without dashes; `in` is its input (default:
    the previous step's `out`), `out` its -o. The whole file is checked before any step runs.

    A run killed part-way continues with --resume: each store records the command that
    made it, so finished steps are skipped, the interrupted one resumes where it stopped
    and the rest run; without --resume an existing output is refused (or --overwrite).
    """
    state = ctx.find_object(CliState)
    assert state is not None
    if resume and overwrite:
        raise InputError(
            "give --resume (finish an interrupted run) or --overwrite (start over), not both"
        )
    pipeline = load_pipeline(pipeline_file, cli, overwrite=overwrite)
    steps_state = _step_state(ctx, state, pipeline)
    if dry_run:
        _dry_run(pipeline, _global_args(steps_state), resume)
        state.say(f"cubepipe run: {pipeline_file} is valid ({len(pipeline.steps)} steps)")
        return
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if steps_state.scheduler_spec == "local":
            # One cluster for the whole run: every step joins it instead of starting its own.
            client = stack.enter_context(
                scheduler(
                    "local",
                    workers=steps_state.workers,
                    memory_limit=steps_state.memory_limit,
                    quiet=steps_state.quiet,
                )
            )
            steps_state = dataclasses.replace(steps_state, scheduler_spec=client.scheduler.address)
        run_pipeline(pipeline, cli, steps_state, say=state.say, resume=resume)
    state.say(
        f"cubepipe run: {len(pipeline.steps)} steps of {pipeline_file} done in "
        f"{time.perf_counter() - t0:.1f} s"
    )
