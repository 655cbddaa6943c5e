#!/usr/bin/env bash
# One GPU session's checks of the engine, written for the lent device machine (torch only, no service):
# the whole test suite (CUDA tests included), bench/maml.py and bench/batched.py (sessions/s at batch 1,
# 64 and 1,024) on CUDA. Results go to $OUT (default
# bench/results). Carry .whl (higher, torchopt, optree, graphviz wheels) and .gpu/bench_maml.py (the anchors).
set -uo pipefail
out="${OUT:-bench/results}"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
nvidia-smi -L | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$out/gpu.txt"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests 2>&1 | tail -60 | tee "$out/gpu-tests.log"
timeout 300 python3 bench/maml.py --device cuda --anchors .gpu/bench_maml.py \
  --impls higher,torchopt,pytorch,torch.func,metaserve --out "$out/maml-cuda" 2>&1 | tail -80
timeout 180 python3 bench/batched.py --device cuda --sessions 1 64 1024 --out "$out/batched-cuda" 2>&1 | tail -20
