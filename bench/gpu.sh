#!/usr/bin/env bash
# The GPU checks and benchmark suite in one go, for a lent GPU machine (issue 24 point 4); about 8 minutes on an
# H100 / H200-class card.
#
#   OUT=/tmp/gpu bash bench/gpu.sh        # writes $OUT/checks.log, $OUT/gpu.jsonl, $OUT/gpu.md
#   GPU_BENCH_ARGS="--shapes 1b --workloads sft-lora rollout" bash bench/gpu.sh    # a part of the suite
#
# Packages the machine lacks (trl and datasets for the anchors; bitsandbytes for QLoRA; vllm for its rollout row)
# can be carried as wheels in .whl/ (see bench/README.md, "GPU suite"): they are installed into /tmp/site first.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'bench/gpu.sh: no CUDA device here')" \
    || exit 1
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee "$OUT/checks.log"
# the CUDA paths: bf16 autocast training, QLoRA's 4-bit layers, the adapters' CUDA tests
timeout 120 "$PY" -m pytest -q -x tests/test_peft_cuda.py 2>&1 | tail -20 | tee -a "$OUT/checks.log"
# shellcheck disable=SC2086  # GPU_BENCH_ARGS is a list of arguments
timeout 420 "$PY" -m posttrain bench gpu --out "$OUT" ${GPU_BENCH_ARGS:-}
