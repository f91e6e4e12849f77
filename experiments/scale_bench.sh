#!/usr/bin/env bash
# 1 vs 2 processes on this machine (issue 10): extraction and phase-1 training throughput.
# Writes experiments/results/bench/scale.json; run on an idle machine.
#
#   experiments/scale_bench.sh [TEXTS]      # default 1000 Wikipedia sentences
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
TEXTS=${1:-1000}
out=$(mktemp)
for P in 1 2; do
  root=$(mktemp -d)
  # torchrun gives each of P>1 processes OMP_NUM_THREADS=1; one process keeps every core
  .venv/bin/python -m torch.distributed.run --standalone --nproc-per-node "$P" \
    experiments/scale_bench.py "$TEXTS" "$root" 2>/dev/null | grep '^{' >> "$out"
  rm -rf "$root"
done
mkdir -p experiments/results/bench
.venv/bin/python - "$out" <<'PY'
import json, os, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
tmp = "experiments/results/bench/scale.json.tmp"
json.dump({"command": "experiments/scale_bench.sh", "cpus": os.cpu_count(), "runs": rows},
          open(tmp, "w"), indent=1)
os.replace(tmp, "experiments/results/bench/scale.json")
print(f"{'procs':>5} {'threads':>7} {'extract tok/s':>13} {'train tok/s':>11} {'held-out MSE':>12}")
for r in rows:
    print(f"{r['processes']:>5} {r['threads_per_process']:>7} {r['extract_tokens_per_s']:>13.0f} "
          f"{r['train_tokens_per_s']:>11.0f} {r['heldout_mse']:>12.6f}")
PY
rm -f "$out"
