#!/usr/bin/env bash
# The accelerator checks as one prepared run on a lent GPU machine, inside the device tool's 10 minutes:
#
#   device run: command="bash benchmarks/device_check.sh", carry=[".whl"], timeout_s=590
#
# `.whl/` (ignored by git; `pip download ml_collections --no-deps -d .whl`) holds what the machine's image lacks.
# Writes $OUT/peer.json (Hugging Face Mask2Former R50, 1024 px, batch 16, bf16: the peer of bench_gpu's `r50`),
# $OUT/gpu.json (benchmarks/bench_gpu.py, most needed first, each variant written as soon as it finishes) and
# $OUT/log. Then: docs/bench/gpu_h200*.json, the GPU tables of docs/scaling.md and README.
set -uo pipefail
OUT=${OUT:-device_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD"
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import jax, torch; print('jax', jax.__version__, jax.devices(), 'torch', torch.__version__)"
  timeout 170 python3 benchmarks/bench_peer.py --device cuda --dtype bfloat16 --image_size 1024 --batch 16 \
      --out "$OUT/peer.json"
  python3 benchmarks/bench_gpu.py --out "$OUT/gpu.json" --budget_s 300 --only matching,vitb_remat,vitb_remat_dense,criterion,criterion_dense,r50,vitb_parts
} 2>&1 | tee "$OUT/log"
