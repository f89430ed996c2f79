"""The stand-in's own self-check runs only where the stand-in is ``cupy`` (``make
test-standin``); in a plain run (no CuPy) or on a real GPU it is not collected."""

from __future__ import annotations

import importlib.util

_spec = importlib.util.find_spec("cupy")
STANDIN = _spec is not None and "gpu_standin" in str(_spec.origin)
collect_ignore_glob = [] if STANDIN else ["test_*.py"]


def pytest_collection_modifyitems(config, items) -> None:  # type: ignore[no-untyped-def]
    import pytest  # noqa: PLC0415

    for item in items:
        if "gpu_standin" in str(item.path):
            item.add_marker(pytest.mark.gpu)  # run by `make test-standin` (-m gpu)
