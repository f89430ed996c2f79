"""Running a planned pipeline (:mod:`~cubepipe.pipeline.cli.runner.plan` says what a
pipeline file holds and how it is checked): each step's job -- the function behind
``cubepipe OP`` (:mod:`~cubepipe.pipeline.cli._jobs`), which calls the library -- runs in
order with the parameters the step was parsed to; no click command is invoked. With
``resume=True`` the steps an interrupted run finished or began are skipped or resumed
(:mod:`~cubepipe.pipeline.cli.runner.resume`). :class:`~cubepipe.storage.errors.StepError`
(defined in storage with every other error) is re-exported here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import click

from cubepipe.pipeline.cli._jobs import run_job
from cubepipe.pipeline.cli.runner.plan import OPS, Pipeline, Step, load_pipeline, plan_pipeline
from cubepipe.pipeline.cli.runner.resume import ResumeAction, resume_action
from cubepipe.storage.errors import CubepipeError, InputError, StepError, StoreExistsError

__all__ = [
    "OPS",
    "Pipeline",
    "ResumeAction",
    "Step",
    "StepError",
    "load_pipeline",
    "plan_pipeline",
    "resume_action",
    "run_pipeline",
]


def run_pipeline(
    pipeline: Pipeline,
    group: click.Group,
    obj: Any,
    *,
    say: Callable[[str], None] = lambda _msg: None,
    resume: bool = False,
    jobs: Mapping[str, Callable[..., Any]] | None = None,
) -> list[float]:
    """Run each step's job in order, as ``cubepipe OP ARGS`` would (the same function,
    with the same parameters; no click command is invoked).

    Parameters
    ----------
    pipeline
        From :func:`plan_pipeline` / :func:`load_pipeline`.
    group
        The click group whose commands the steps name (for ``resume`` decisions).
    obj
        The state the jobs receive (the CLI's state: device, scheduler).
    say
        Called with one status line as each step starts and ends (or is skipped).
    resume
        Finish an interrupted run: a step whose output store is complete and was made by
        the same command and options is skipped, an incomplete one is resumed (its
        job gets ``resume=True``); see :mod:`cubepipe.pipeline.cli.runner.resume`.

    Returns
    -------
    list of float
        Seconds each step took (0.0 for a skipped step).

    Raises
    ------
    StepError
        A step failed with a :class:`CubepipeError` or a usage error, or (``resume``) its
        output was made by a different command; the one-line message names the step.
        Other exceptions (bugs) propagate unchanged.
    """
    n = len(pipeline.steps)
    times: list[float] = []
    for step in pipeline.steps:
        label = f"cubepipe run: step {step.number}/{n} {step.op}"
        target = step.output or (step.inputs[0] if step.inputs else "")
        t0 = time.perf_counter()
        try:
            params = step.params
            if resume:
                action = resume_action(step, group)
                if action.kind == "skip":
                    say(f"{label}: skipped: {action.note} (--resume)")
                    times.append(0.0)
                    continue
                params = action.params
                if action.note:
                    say(f"{label}: {action.note}")
            say(f"{label}: started ({', '.join(step.inputs) or '-'} -> {target or '-'})")
            run_job(step.op, obj, params, jobs=jobs)
        except CubepipeError as exc:
            say(f"{label}: FAILED after {time.perf_counter() - t0:.1f} s")
            raise StepError(step, exc, _hint(exc, resume)) from exc
        except click.ClickException as exc:
            say(f"{label}: FAILED after {time.perf_counter() - t0:.1f} s")
            raise StepError(step, InputError(exc.format_message())) from exc
        times.append(time.perf_counter() - t0)
        say(f"{label}: done in {times[-1]:.1f} s")
    return times


def _hint(exc: CubepipeError, resume: bool) -> str:
    if isinstance(exc, StoreExistsError) and not resume:
        return (
            "; `cubepipe run --resume` skips the steps whose output is complete and finishes "
            "an interrupted one"
        )
    return ""
