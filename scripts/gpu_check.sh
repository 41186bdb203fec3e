#!/usr/bin/env bash
# The checks that need a CUDA device, as one script for a lent GPU machine (docs/engine.md):
# the `gpu`-marked tests, then the benchmarks on cuda (quick mode). That machine has its own
# python3 with torch and no registry: the packages it lacks travel as wheels in .whl/
# (see docs/engine.md, "On a GPU"). Logs go to $OUT (or out/gpu).
set -uo pipefail
out="${OUT:-out/gpu}"
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/service:$PWD" PYTHONUNBUFFERED=1
export SALIENCY_CACHE_DIR=/tmp/saliency-cache
export BENCH_MAX_TOTAL_WAIT_S="${BENCH_MAX_TOTAL_WAIT_S:-20}"  # a lent machine is ours alone
nvidia-smi -L
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider \
  2>&1 | tee "$out/gpu-tests.log"
tests=$?
# BENCHES="fast ig ..." picks some; default: every benchmark but the TorchServe one (no Java there).
benches=$(BENCHES="${BENCHES:-}" python3 -c 'import os; from bench.suite import BENCHMARKS
names = os.environ["BENCHES"].split() or [n for n in BENCHMARKS if n != "torchserve"]
print(" ".join(f"--only {n}" for n in names))')
# shellcheck disable=SC2086
timeout "${BENCH_TIMEOUT:-300}" python3 -m bench --device cuda --quick $benches 2>&1 | tee "$out/bench-cuda.log"
echo "tests exit $tests, bench exit $?"
exit "$tests"
