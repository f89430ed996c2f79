"""``cubepipe run PIPELINE.yaml``: planning, running and resuming the steps of a pipeline
file.
"""

from cubepipe.pipeline.cli.runner.pipeline import (
    OPS,
    Pipeline,
    ResumeAction,
    Step,
    StepError,
    load_pipeline,
    plan_pipeline,
    resume_action,
    run_pipeline,
)

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
