#!/usr/bin/env bash
# One GPU lease's checks, written for the lent device machine, which has torch but not the service's
# packages: carry them as wheels in .whl (see /work/.library/device/README.md). Runs bench/batched.py at
# 1, 64 and 1,024 sessions first, so a lease cut short still has its figures, then Conv4's convolutions with
# a weight per task, grouped against unfolded (bench/task_convs.py), then the CUDA tests with the
# engine, batching, session-cache and real-server tests beside them, then a profile of one batched
# prediction, then Conv4-MAML with a task batch's batch norm through torch's fused kernel as on a CPU
# (layers._fuses_tasks forced: does the GPU gain what the CPU did?), and last torch.compile's figures for
# the glyph workload (bench/batched.py --compile; the Conv4-MAML inner loop for 1,024 sessions compiles
# longer than a lease). Results go to $OUT (default bench/results).
set -uo pipefail
out="${OUT:-bench/results}"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
python="$(python3 -c 'import sys; print(sys.executable)')"
# The real-server tests start the `metaserve` script beside the interpreter; the project is not installed.
printf '#!/bin/sh\nexec %s -c "from app.cli import app; app()" "$@"\n' "$python" >"$(dirname "$python")/metaserve"
chmod +x "$(dirname "$python")/metaserve"
{ nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__)"; } | tee "$out/gpu.txt"
timeout 170 python3 bench/batched.py --device cuda --sessions 1 64 1024 --repeats 3 --out "$out/batched-cuda" \
  2>&1 | tail -12
timeout 60 python3 bench/task_convs.py --device cuda --out "$out/task-convs-cuda" 2>&1 | tail -10
timeout 170 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_cache.py tests/test_stacked.py \
  tests/test_compiled_adapt.py tests/test_batching.py tests/test_serve_e2e.py tests/test_soak.py tests/test_host_memory.py \
  >"$out/gpu-tests.log" 2>&1; tail -5 "$out/gpu-tests.log"
timeout 60 python3 bench/profile_batch.py --device cuda >"$out/profile-cuda.txt" 2>&1; grep '^##' "$out/profile-cuda.txt"
timeout 90 python3 -c 'import runpy, sys, app.meta.layers as layers
layers._fuses_tasks = lambda x: True
sys.argv = ["batched.py", *sys.argv[1:]]
runpy.run_path("bench/batched.py", run_name="__main__")' --device cuda --sessions 1 1024 --workloads conv4-maml \
  --repeats 3 --out "$out/batched-cuda-fused-norm" 2>&1 | tail -3
timeout 170 python3 bench/batched.py --device cuda --sessions 1024 --workloads glyphs --repeats 3 --compile \
  --out "$out/batched-cuda-compiled" 2>&1 | tail -3
