"""glibc's mmap threshold is fixed by the cubepipe command (pipeline/malloc.py).

Checked from the outside: where glibc puts a 4 MiB buffer allocated after a 16 MiB one
was freed, read from /proc/self/maps. With glibc's default the freed 16 MiB raises the
threshold, and the 4 MiB buffer lands in the main heap (``[heap]``, which keeps freed
space); with the threshold fixed it gets a mapping of its own.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc only",
)

_PROBE = """
import sys
import numpy as np
from cubepipe.pipeline.malloc import bound_heap_growth
if sys.argv[1] == "fix":
    print("set", bound_heap_growth())
big = np.ones(16 * 2**20, dtype=np.uint8)  # mmapped at glibc's start threshold (128 KiB)
del big  # freeing it raises glibc's dynamic threshold to 16 MiB, unless it was fixed
buf = np.ones(4 * 2**20, dtype=np.uint8)
addr = buf.ctypes.data
for line in open("/proc/self/maps"):
    span, *rest = line.split()
    lo, hi = (int(v, 16) for v in span.split("-"))
    if lo <= addr < hi:
        print("region", rest[-1] if len(rest) == 5 else "anonymous")
        break
"""


def _clean_env() -> dict[str, str]:
    """This process's environment without glibc's MALLOC_* variables: a test that
    started a LocalCluster in this process left ``MALLOC_TRIM_THRESHOLD_=65536`` in
    ``os.environ`` (distributed's Nanny sets its pre-spawn environment there, for good)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}


def _probe(mode: str, env: dict[str, str] | None = None) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**_clean_env(), **(env or {})},
    ).stdout
    return out.split("\n")


def test_glibc_default_puts_a_chunk_buffer_in_the_heap_after_a_larger_one_was_freed():
    # The control: without the fix the test below would see [heap] (so it can fail).
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, "default"], capture_output=True, text=True,
        check=True, env=_clean_env(),
    ).stdout  # fmt: skip
    assert "region [heap]" in out


def test_the_fixed_threshold_gives_a_chunk_buffer_its_own_mapping():
    out = _probe("fix")
    assert "set True" in out
    assert "region anonymous" in out


def test_a_threshold_the_user_set_is_left_alone():
    out = _probe("fix", {"MALLOC_MMAP_THRESHOLD_": "262144"})
    assert "set False" in out


def test_the_cubepipe_command_fixes_it():
    # The console script's own entry point, run for real (--version), then the probe.
    probe = _PROBE.replace('if sys.argv[1] == "fix":', "if False:")
    code = (
        "import sys\n"
        "sys.argv = ['cubepipe', '--version']\n"
        "from cubepipe.pipeline.cli import run\n"
        "try:\n    run()\nexcept SystemExit:\n    pass\n" + probe
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env=_clean_env(),
    ).stdout  # fmt: skip
    assert "cubepipe, version" in out
    assert "region anonymous" in out


_TRIM_PROBE = """
import resource, sys
import numpy as np
from cubepipe.pipeline.malloc import bound_heap_growth
print("set", bound_heap_growth())
def strip():  # what a strip of the AE kernel allocates: ~1 MiB temporaries, on the heap
    bufs = [np.ones(1000 * 1024 // 8) for _ in range(8)]
    del bufs
strip()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    strip()
print("faults", resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _trim_faults(env: dict[str, str]) -> tuple[bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", _TRIM_PROBE], capture_output=True, text=True, check=True,
        env={**_clean_env(), **env},
    ).stdout.split("\n")  # fmt: skip
    return "set True" in out, int(next(x for x in out if x.startswith("faults")).split()[1])


def test_freed_strip_temporaries_stay_on_the_heap_instead_of_faulting_in_again():
    # 20 rounds of 8 x 1000 KiB: 40 000 fresh pages if glibc trims them after each round.
    set_, faults = _trim_faults({})
    assert set_
    assert faults < 2_000
    # The control: the mmap threshold fixed alone (the trim threshold then stays at
    # glibc's 128 KiB) gives every round's pages back and faults them in again.
    set_, faults = _trim_faults({"MALLOC_MMAP_THRESHOLD_": "1048576"})
    assert not set_
    assert faults > 20_000
