#!/usr/bin/env bash
# The one prepared run for a session that is lent the GPU machine (one NVIDIA H200, 16 CPU
# cores, no network; ../shared/device/README.md): the GPU-marked tests, then
# benchmarks/bench_gpu.py at 1x (cubepipe's GPU path beside its CPU path on that machine's
# CPU, same run). Results come back under $OUT:
#   test-gpu.txt            pytest -m gpu output
#   bench-gpu.txt           the benchmark's output (table and summary)
#   bench_gpu.md/.json      benchmarks/results/bench_gpu.{md,json} of this run (commit them)
# Exits with pytest's status.
#
# Here, from the repository root, first: ../shared/device/carry-wheels   (fills .whl/)
# Then:  run(command="bash benchmarks/gpu_device_run.sh", carry=[".whl"], timeout_s=600)
#
# Time (estimate; nothing here has run on a GPU yet): installs ~30 s; pytest -m gpu (~30
# tests) ~1-2 min, capped at 200 s; bench_gpu at 1x: 10 cases x 3 runs, each a fresh
# process (~2 s of imports + CUDA context, then ~1-4 s of work: on 2 busy cores the CPU
# cases took 4-9 s each, the recorded bench_standardize/bench_pca 1x runs ~2 s), plus
# making the 1x input and training the small autoencoder once (~20 s): ~2.5-4 min, capped
# at 330 s. Total ~4-6 min, at most ~9.5 min with both caps hit. The 4x size is left out
# (about 4x the bench time); bench_filter's *_gpu cases are not run.
set -u

if [ -z "${OUT:-}" ]; then
  OUT=$(mktemp -d)
  echo "OUT was not set (not on the device machine?): writing to $OUT"
fi
cd "$(dirname "$0")/.." || exit 1

# Wheels the machine lacks (dask, zarr, ...: carried in .whl/), then the project itself.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
python3 -m pip install -q --no-deps --no-build-isolation --no-index --upgrade \
  --target /tmp/site . || exit 1

echo "== machine"
nvidia-smi -L
echo "CPU cores: $(nproc)"
python3 -c "import cupy; print('CuPy', cupy.__version__)"
python3 -c "from cubepipe.pipeline.backend import gpu_status; print('gpu_status:', gpu_status())"

echo "== pytest -m gpu"
timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider 2>&1 | tee "$OUT/test-gpu.txt"
test_rc=${PIPESTATUS[0]}
echo "pytest exit status: $test_rc" | tee -a "$OUT/test-gpu.txt"

echo "== bench_gpu --size 1x --repeat 3"
stamp=$(mktemp)  # copy only result files this run wrote
timeout 330 python3 benchmarks/bench_gpu.py --size 1x --repeat 3 2>&1 | tee "$OUT/bench-gpu.txt"
bench_rc=${PIPESTATUS[0]}
echo "bench_gpu exit status: $bench_rc" | tee -a "$OUT/bench-gpu.txt"
for f in benchmarks/results/bench_gpu.md benchmarks/results/bench_gpu.json; do
  if [ -f "$f" ] && [ "$f" -nt "$stamp" ]; then
    cp "$f" "$OUT/"
  else
    echo "no new $f from this run" | tee -a "$OUT/bench-gpu.txt"
  fi
done

exit "$test_rc"
