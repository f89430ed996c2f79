"""``python -m cubepipe.pipeline`` is the same as the ``cubepipe`` command."""

from .cli import run

run()
