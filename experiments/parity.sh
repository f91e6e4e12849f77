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
#
# Task distillation (issue 21, item 5): KD="T ALPHA" compares `alad finetune --mode kd` on
# minilm-l6 with the reference's `--teacher DIR --kd-t T --kd-alpha ALPHA`, the same teacher,
# T, alpha, data and seeds (one JSON per harness and seed, "kd" in it). The teacher is TEACHER
# (a Hugging Face token-classification folder), else mpnet-base fine-tuned once by the reference
# (seed TEACHER_SEED, `--save`); either way its config.json gets the label names (the reference's
# order: sorted tags of train + dev + test), which alad needs to match its logits to its labels.
#   KD="2 0.5" experiments/parity.sh                       # 3 seeds, the teacher trained first
#   KD="2 0.5" TEACHER=runs/parity/teacher-mpnet-base-s13 SEEDS=13 experiments/parity.sh
# A plumbing check on small data (not a result): DATA=<folder with train/dev/test.conllu>
# EPOCHS=1 OUT=/tmp/parity WORK=/tmp/parity-work KD="2 0.5" SEEDS=13 experiments/parity.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's alad, whichever venv
D=${DATA:-../shared/data/pos_de}
REF=${REF:-../shared/reference/hf_tokcls.py}
SEEDS=${SEEDS:-13 14 15}
MODELS=${MODELS:-minilm-l6 mpnet-base}
LABEL=${LABEL:-alad}                 # an alad variant's name in experiments/results/parity/
HARNESSES=${HARNESSES:-alad reference}
export EPOCHS=${EPOCHS:-4}     # the record writers read it
KD=${KD:-}                           # "T ALPHA": the distillation comparison instead
TEACHER_SEED=${TEACHER_SEED:-13}
OUT=${OUT:-experiments/results/parity}
WORK=${WORK:-runs/parity}
mkdir -p "$OUT" "$WORK"
PY=${PY:-.venv/bin/python}
ALAD="$PY -m alad.cli"
model_dir() {  # the same weights alad loads, as a plain HF folder for the reference harness
  $PY - "$1" <<'PY'
import sys
from alad.models.catalog import load_encoder
print(load_encoder(sys.argv[1]).source)
PY
}
if [ -n "$KD" ]; then
  read -r KD_T KD_A <<<"$KD"
  MODELS=minilm-l6 LABEL="$LABEL-kd-T$KD_T-a$KD_A"
  TEACHER=${TEACHER:-$WORK/teacher-mpnet-base-s$TEACHER_SEED}
  export KD TEACHER  # the record writers below read them
  if [ ! -f "$TEACHER/config.json" ]; then
    echo "== reference teacher mpnet-base seed $TEACHER_SEED -> $TEACHER ($(date +%T))"
    $PY "$REF" --task pos --model "$(model_dir mpnet-base)" --train "$D/train.conllu" \
      --dev "$D/dev.conllu" --test "$D/test.conllu" --lr 5e-5 --epochs "$EPOCHS" --bs 16 \
      --seed "$TEACHER_SEED" --out "$WORK/ref-teacher" --save "$TEACHER" | tee "$TEACHER.log"
    rm -rf "$WORK/ref-teacher"
  fi
  $PY - "$TEACHER" "$D" <<'PY'
import json, sys
from pathlib import Path
from alad.data.readers import read_conllu
folder, data = Path(sys.argv[1]), Path(sys.argv[2])
labels = sorted({t for split in ("train", "dev", "test")
                 for s in read_conllu(data / f"{split}.conllu") for t in s.tags})
config = json.loads((folder / "config.json").read_text())
assert len(config["id2label"]) == len(labels), "the teacher has another label set"
config["id2label"] = {str(i): name for i, name in enumerate(labels)}
config["label2id"] = {name: i for i, name in enumerate(labels)}
(folder / "config.json").write_text(json.dumps(config, indent=2))
PY
fi
kd_alad() {  # alad's distillation options (none without KD)
  [ -n "$KD" ] && echo "--set phase3.distill.teacher=$TEACHER --set phase3.distill.temperature=$KD_T --set phase3.distill.alpha=$KD_A"
  return 0
}
kd_ref() {
  [ -n "$KD" ] && echo "--teacher $TEACHER --kd-t $KD_T --kd-alpha $KD_A"
  return 0
}
for model in $MODELS; do
  mode=$([ "$model" = mpnet-base ] && echo large || echo compressed)
  [ -n "$KD" ] && mode=kd
  for seed in $SEEDS; do
    f="$OUT/$LABEL-$model-s$seed.json"
    if [[ " $HARNESSES " == *" alad "* && ! -f "$f" ]]; then
      echo "== $LABEL $model seed $seed ($(date +%T), load $(cut -d' ' -f1 /proc/loadavg))"
      t0=$(date +%s)
      # shellcheck disable=SC2046
      $ALAD finetune -q --task pos --mode "$mode" --compressed minilm-l6 --large mpnet-base \
        --train "$D/train.conllu" --dev "$D/dev.conllu" --test "$D/test.conllu" \
        --epochs "$EPOCHS" --set seed="$seed" --out "$WORK/$LABEL-$model-s$seed" \
        $(kd_alad) ${ALAD_EXTRA:-}
      $PY - "$WORK/$LABEL-$model-s$seed/metrics.json" "$f" "$model" "$seed" "$t0" "$LABEL" <<'PY'
import json, sys, time, os
m = json.load(open(sys.argv[1]))
rec = {"harness": sys.argv[6], "extra": os.environ.get("ALAD_EXTRA", ""), "model": sys.argv[3], "seed": int(sys.argv[4]),
       "dev": m["dev"]["main"], "test": m["test"]["main"],
       "dev_per_epoch": [h["dev_main"] for h in m["history"]],
       "secs": round(time.time() - int(sys.argv[5])), "load1_end": os.getloadavg()[0]}
if os.environ.get("KD"):
    t, a = os.environ["KD"].split()
    rec["kd"] = {"t": float(t), "alpha": float(a), "teacher": os.environ["TEACHER"]}
if os.environ.get("EPOCHS", "4") != "4":
    rec["epochs"] = int(os.environ["EPOCHS"])
tmp = sys.argv[2] + ".tmp"; json.dump(rec, open(tmp, "w"), indent=1); os.replace(tmp, sys.argv[2])
print(rec)
PY
    fi
    ref=reference$([ -n "$KD" ] && echo "-kd-T$KD_T-a$KD_A")
    f="$OUT/$ref-$model-s$seed.json"
    if [[ " $HARNESSES " == *" reference "* && ! -f "$f" ]]; then
      echo "== $ref $model seed $seed ($(date +%T), load $(cut -d' ' -f1 /proc/loadavg))"
      # shellcheck disable=SC2046
      $PY "$REF" --task pos --model "$(model_dir "$model")" --train "$D/train.conllu" \
        --dev "$D/dev.conllu" --test "$D/test.conllu" --lr 5e-5 --epochs "$EPOCHS" --bs 16 \
        --seed "$seed" --out "$WORK/$ref-$model-s$seed" $(kd_ref) | tee "$WORK/$ref-$model-s$seed.log"
      $PY - "$WORK/$ref-$model-s$seed.log" "$f" "$model" "$seed" "$ref" <<'PY'
import json, sys, os
last = [l for l in open(sys.argv[1]) if l.startswith("{")][-1]
m = json.loads(last)
rec = {"harness": sys.argv[5], "model": sys.argv[3], "seed": int(sys.argv[4]),
       "dev": m["dev"], "test": m["test"], "secs": m["secs"], "load1_end": os.getloadavg()[0]}
if m.get("teacher"):
    rec["kd"] = {"t": m["kd_t"], "alpha": m["kd_alpha"], "teacher": m["teacher"]}
    rec["n_train"] = m["n_train"]
if os.environ.get("EPOCHS", "4") != "4":
    rec["epochs"] = int(os.environ["EPOCHS"])
tmp = sys.argv[2] + ".tmp"; json.dump(rec, open(tmp, "w"), indent=1); os.replace(tmp, sys.argv[2])
print(rec)
PY
      rm -rf "${WORK:?}/$ref-$model-s$seed"
    fi
  done
done
