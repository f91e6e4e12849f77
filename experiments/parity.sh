#!/usr/bin/env bash
# Harness parity (issue 7, item 1): alad finetune vs the peer HF Trainer recipe on UD German POS,
# same models, data, lr, epochs, batch and seeds. One JSON per (harness, model, seed) in
# experiments/results/parity/; a run whose JSON exists is skipped, so the script resumes after a
# stop.
#
#   experiments/parity.sh                 # seeds 13 14 15, minilm-l6 then mpnet-base
#   SEEDS="13 14" MODELS=minilm-l6 experiments/parity.sh
#   LABEL=alad-warmup0 ALAD_EXTRA="--set phase3.warmup_ratio=0" HARNESSES=alad experiments/parity.sh
#   .venv/bin/python experiments/parity_summary.py   # mean ± std table
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
D=${DATA:-../shared/data/pos_de}
REF=${REF:-../shared/reference/hf_tokcls.py}
SEEDS=${SEEDS:-13 14 15}
MODELS=${MODELS:-minilm-l6 mpnet-base}
LABEL=${LABEL:-alad}                 # an alad variant's name in experiments/results/parity/
HARNESSES=${HARNESSES:-alad reference}
OUT=experiments/results/parity
WORK=${WORK:-runs/parity}
mkdir -p "$OUT" "$WORK"
PY=.venv/bin/python
model_dir() {  # the same weights alad loads, as a plain HF folder for the reference harness
  $PY - "$1" <<'PY'
import sys
from alad.models.catalog import load_encoder
print(load_encoder(sys.argv[1]).source)
PY
}
for model in $MODELS; do
  mode=$([ "$model" = mpnet-base ] && echo large || echo compressed)
  for seed in $SEEDS; do
    f="$OUT/$LABEL-$model-s$seed.json"
    if [[ " $HARNESSES " == *" alad "* && ! -f "$f" ]]; then
      echo "== $LABEL $model seed $seed ($(date +%T), load $(cut -d' ' -f1 /proc/loadavg))"
      t0=$(date +%s)
      .venv/bin/alad finetune -q --task pos --mode "$mode" --compressed minilm-l6 --large mpnet-base \
        --train "$D/train.conllu" --dev "$D/dev.conllu" --test "$D/test.conllu" \
        --set seed="$seed" --out "$WORK/$LABEL-$model-s$seed" ${ALAD_EXTRA:-}
      $PY - "$WORK/$LABEL-$model-s$seed/metrics.json" "$f" "$model" "$seed" "$t0" "$LABEL" <<'PY'
import json, sys, time, os
m = json.load(open(sys.argv[1]))
rec = {"harness": sys.argv[6], "extra": os.environ.get("ALAD_EXTRA", ""), "model": sys.argv[3], "seed": int(sys.argv[4]),
       "dev": m["dev"]["main"], "test": m["test"]["main"],
       "dev_per_epoch": [h["dev_main"] for h in m["history"]],
       "secs": round(time.time() - int(sys.argv[5])), "load1_end": os.getloadavg()[0]}
tmp = sys.argv[2] + ".tmp"; json.dump(rec, open(tmp, "w"), indent=1); os.replace(tmp, sys.argv[2])
print(rec)
PY
    fi
    f="$OUT/reference-$model-s$seed.json"
    if [[ " $HARNESSES " == *" reference "* && ! -f "$f" ]]; then
      echo "== reference $model seed $seed ($(date +%T), load $(cut -d' ' -f1 /proc/loadavg))"
      $PY "$REF" --task pos --model "$(model_dir "$model")" --train "$D/train.conllu" \
        --dev "$D/dev.conllu" --test "$D/test.conllu" --lr 5e-5 --epochs 4 --bs 16 \
        --seed "$seed" --out "$WORK/ref-$model-s$seed" | tee "$WORK/ref-$model-s$seed.log"
      $PY - "$WORK/ref-$model-s$seed.log" "$f" "$model" "$seed" <<'PY'
import json, sys, os
last = [l for l in open(sys.argv[1]) if l.startswith("{")][-1]
m = json.loads(last)
rec = {"harness": "reference", "model": sys.argv[3], "seed": int(sys.argv[4]),
       "dev": m["dev"], "test": m["test"], "secs": m["secs"], "load1_end": os.getloadavg()[0]}
tmp = sys.argv[2] + ".tmp"; json.dump(rec, open(tmp, "w"), indent=1); os.replace(tmp, sys.argv[2])
print(rec)
PY
      rm -rf "$WORK/ref-$model-s$seed"
    fi
  done
done
