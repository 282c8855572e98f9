#!/usr/bin/env bash
# The whole default chain with GLP_PROFILE=gpu (what `make gpu` runs): conversion, extraction, norm stats, prior,
# evaluation, steering, ΔLM, SAE, probes, OOD, every check; in its own store root and Dagster home, so the CPU run's
# artifacts stay. Then each step's time (benchmarks/step_times.py) and `glp summary --markdown` into
# $OUT/gpu-run-<date>.md (OUT defaults to benchmarks/results).
#
#   benchmarks/gpu_chain.sh [--smoke]   --smoke: the same chain at tiny sizes (benchmarks/gpu_smoke.toml; about a
#                                       minute on a GPU), its own store; a CPU smoke needs GLP_DEVICE=cpu
#   PYTHON=... PARTITION=... OUT=...    interpreter (default .venv/bin/python), source, where the results go
# Needs the datasets (`make data`) and a CUDA GPU (GLP_PROFILE=gpu refuses to start without one unless GLP_DEVICE=cpu).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PARTITION=${PARTITION:-smollm2-135m/L15}
SMOKE=$([ "${1:-}" = --smoke ] && echo 1 || echo 0)
SUFFIX=$([ "$SMOKE" = 1 ] && echo -smoke || echo)
export GLP_PROFILE=gpu PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}src:."
export PYTHONWARNINGS="ignore:Function \`asset_materialize_command\` is superseded"
export GLP_STORE__ROOT=${GLP_STORE__ROOT:-$PWD/assets/store-gpu$SUFFIX}
export DAGSTER_HOME=${GPU_DAGSTER_HOME:-$PWD/.dagster_home_gpu$SUFFIX}
[ "$SMOKE" = 1 ] && export GLP_CONFIG_FILE=${GLP_CONFIG_FILE:-benchmarks/gpu_smoke.toml}
RESULTS=${OUT:-benchmarks/results}
mkdir -p "$DAGSTER_HOME" "$RESULTS"
[ -f "$DAGSTER_HOME/dagster.yaml" ] || cp dagster.yaml "$DAGSTER_HOME/dagster.yaml"
if [ ! -f assets/datasets/corpus/train.jsonl ]; then
  echo "no corpus in assets/datasets/corpus: run \`make data\` first (or carry assets/datasets to this machine)" >&2
  exit 2
fi

echo "gpu chain$([ "$SMOKE" = 1 ] && echo ' (smoke, tiny sizes)'): $PARTITION, store $GLP_STORE__ROOT, $(date -u +%FT%TZ)"
t0=$(date +%s)
"$PY" -m dagster asset materialize -m glp_dagster.definitions --select '* and not key:scaling' \
  --partition "$PARTITION" -c glp_dagster/console.yaml
rc=$?
echo "chain: exit status $rc, $(( $(date +%s) - t0 )) s wall"
"$PY" benchmarks/step_times.py
if [ "$rc" -eq 0 ]; then
  md="$RESULTS/gpu-run$SUFFIX-$(date -u +%F).md"
  "$PY" -m glp.cli summary --partition "$PARTITION" --markdown > "$md.tmp" && mv "$md.tmp" "$md" && echo "summary: $md"
fi
exit "$rc"
