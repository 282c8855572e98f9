#!/usr/bin/env bash
# The GPU profile's speed, as ratios measured in one run on one GPU (issue 12):
#   (a) extraction tokens/s / a bare forward cut at the same layer      (bf16, larger batches: benchmarks/extract.py)
#   (b) the trainer's FLOP/s / the GPU's own bf16 matmul FLOP/s          (the gpu profile's prior: benchmarks/train.py)
# each for the default source's shape (SmolLM2-135M, d = 576, layer 15) and the paper's (Llama-3.2-1B, d = 2048,
# layer 7; its prior: D = 2d, H = 4d, 3 blocks, the official network: 0.45 B parameters).
#
# Offline: the models are random-init from SmolLM2-135M's config.json and tokenizer (throughput does not depend on
# weight values), so only those small files are needed, not the weights. Without a CUDA GPU it runs the same steps
# at tiny sizes on the CPU (a smoke test, about 2 minutes on 2 cores; its numbers mean nothing).
#
# Issue 20 adds (a0) a stage table of extraction (extract.py --profile) and the host path alone (--host-path), (b0) the
# training loop's stage tables (train.py --stages: rows streamed vs held on the GPU), the DeepSpeed engine's step vs the
# bare step (in b1/b2), and (c) the whole default chain with GLP_PROFILE=gpu (benchmarks/gpu_chain.sh), with each
# step's time: GPU_CHAIN=smoke (default) runs it at tiny sizes (about a minute), GPU_CHAIN=full at the gpu profile's
# sizes (<= 7 min on an H200), GPU_CHAIN=none skips it. (c) needs the datasets (assets/datasets, `make data`).
#
#   benchmarks/gpu.sh [MODEL_DIR]      MODEL_DIR: a folder with SmolLM2-135M's config.json and tokenizer
#                                      (default: the converted default source under assets/store/source_model/)
#   PYTHON=python3 benchmarks/gpu.sh   the interpreter (default .venv/bin/python); OUT=DIR also writes gpu.txt there,
#                                      and (c)'s gpu-run-<date>.md
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}src"
MODEL=${1:-$(ls -d assets/store/source_model/*/ 2>/dev/null | head -1)}
if [ -z "$MODEL" ] || [ ! -f "$MODEL/config.json" ]; then
  echo "no SmolLM2-135M config found: pass a folder with its config.json and tokenizer (make run converts the" \
       "default source into assets/store/source_model/)" >&2
  exit 2
fi
LOG=${OUT:+$OUT/gpu.txt}
LOG=${LOG:-/dev/null}

if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  DEV=cuda
  EXT_SMOL=(--docs 8192 --batch-size 256 --max-seq-len 256)
  EXT_1B=(--docs 4096 --batch-size 128 --max-seq-len 256)
  TRAIN_SMOL=(--steps 300 --matmul-k 8192)  # steady state over steps 100->300; matmul (4096 x 8192) @ (8192 x 8192)
  TRAIN_1B=(--steps 120 --matmul-k 8192)
  EXT_PROFILE=(--docs 4096 --batch-size 256 --max-seq-len 256)
  TRAIN_STAGES=(--steps 200)
  CHAIN_ENV=()
  LIMIT=${GPU_PART_LIMIT:-130}  # seconds per part, so one slow part cannot take the others' time
else
  DEV=cpu
  EXT_SMOL=(--docs 16 --batch-size 8 --max-seq-len 64 --repeats 1)
  EXT_1B=()  # a 1 B model is too big for a smoke test on a 2-core CPU: skipped
  TRAIN_SMOL=(--steps 4 --batch-size 32 --matmul-k 256)
  TRAIN_1B=(--d 256 --steps 2 --batch-size 32 --matmul-k 256)  # the 1 B prior's recipe at a toy width
  EXT_PROFILE=(--docs 16 --batch-size 8 --max-seq-len 64)
  TRAIN_STAGES=(--steps 4 --batch-size 32)
  CHAIN_ENV=(GLP_DEVICE=cpu)  # GLP_PROFILE=gpu without CUDA starts only with an explicit GLP_DEVICE=cpu
  LIMIT=300
fi

part() {  # part TITLE CMD...: run one measurement under its time limit; a failure is reported and the rest go on
  local title=$1; shift
  echo; echo "=== $title"
  timeout "$LIMIT" "$@" 2>&1 | grep -v -e '^\[20..-..-.. ..:..:..,...\] \[\(WARNING\|INFO\)\]' -e 'UserWarning' -e '^  warnings.warn'
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || echo "!!! $title: exit status $rc$([ "$rc" -eq 124 ] && echo " (over its ${LIMIT} s limit)")"
}

{
  echo "benchmarks/gpu.sh on $(hostname) at $(date -u +%FT%TZ), git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  "$PY" -c 'import torch, transformers; d = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA GPU: CPU smoke test, tiny sizes"
print(f"device: {d}; torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} CPU threads")'
  [ "$DEV" = cuda ] && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader
  echo "models: random-init weights from $MODEL's config (throughput does not depend on weight values)"

  part "(a1) extraction, SmolLM2-135M shape, layer 15, bf16, $DEV" \
    "$PY" benchmarks/extract.py --model "$MODEL" --random-weights --synthetic --dtypes bfloat16 --device $DEV "${EXT_SMOL[@]}"
  part "(a0) extraction stage table and host path, SmolLM2-135M shape, layer 15, bf16 rows raw, $DEV" \
    "$PY" benchmarks/extract.py --model "$MODEL" --random-weights --synthetic --dtypes bfloat16 --device $DEV \
      --row-dtype compute --codec raw --profile --host-path "${EXT_PROFILE[@]}"
  part "(b0) training loop stage tables, gpu profile prior at d = 576, rows streamed vs held on the device, $DEV" \
    "$PY" benchmarks/train.py --profile gpu --d 576 --device $DEV --stages "${TRAIN_STAGES[@]}"
  part "(b1) trainer, gpu profile prior at d = 576 (D = 2d, H = 4d, 6 blocks), bf16, $DEV" \
    "$PY" benchmarks/train.py --profile gpu --d 576 --device $DEV --model-step "${TRAIN_SMOL[@]}"
  if [ ${#EXT_1B[@]} -gt 0 ]; then
    part "(a2) extraction, Llama-3.2-1B shape (d = 2048, 16 blocks), layer 7, bf16, $DEV" \
      "$PY" benchmarks/extract.py --model "$MODEL" --llama-1b-shape --synthetic --dtypes bfloat16 --device $DEV "${EXT_1B[@]}"
  fi
  part "(b2) trainer, the paper's Llama-1B prior (d = 2048, D = 2d, H = 4d, 3 blocks, official: 0.45 B), bf16, $DEV" \
    "$PY" benchmarks/train.py --profile gpu --d 2048 --n-blocks 3 --preset official --device $DEV --model-step "${TRAIN_1B[@]}"
  case "${GPU_CHAIN:-smoke}" in
    none) ;;
    full) LIMIT=${GPU_CHAIN_LIMIT:-480} part "(c) the whole default chain, GLP_PROFILE=gpu, full sizes, $DEV" \
            env "${CHAIN_ENV[@]}" PYTHON="$PY" benchmarks/gpu_chain.sh ;;
    *) LIMIT=${GPU_CHAIN_LIMIT:-240} part "(c) the whole default chain, GLP_PROFILE=gpu, smoke sizes, $DEV" \
         env "${CHAIN_ENV[@]}" PYTHON="$PY" benchmarks/gpu_chain.sh --smoke ;;
  esac
} 2>&1 | tee "$LOG"
