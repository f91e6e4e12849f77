#!/usr/bin/env bash
# Frozen-mode epoch time with and without the frozen-output cache (issue 7, item 3): the same
# alad-frozen POS fine-tuning (minilm-l6, all 719 train sentences, 3 epochs, seed 13) twice, the
# cache in a fresh temporary folder so epoch 1 includes the one extraction. Prints per-epoch
# seconds (training + dev scoring) and writes experiments/results/bench/frozen_cache.json. Run on
# an idle machine.
#
#   experiments/frozen_cache.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
D=${DATA:-../shared/data/pos_de}
EPOCHS=${EPOCHS:-3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
load0=$(cut -d' ' -f1 /proc/loadavg)
for cached in false true; do
  .venv/bin/alad finetune -q --task pos --mode alad-frozen --compressed minilm-l6 --large mpnet-base \
    --train "$D/train.conllu" --dev "$D/dev.conllu" --test "$D/test.conllu" --epochs "$EPOCHS" \
    --set seed=13 --set phase3.cache_frozen=$cached --set cache.dir="$WORK/cache" \
    --out "$WORK/run-$cached" >/dev/null
done
mkdir -p experiments/results/bench
.venv/bin/python - "$WORK" "$load0" <<'PY'
import json, os, sys
work, load0 = sys.argv[1], float(sys.argv[2])
runs = {c: json.load(open(f"{work}/run-{c}/metrics.json")) for c in ("false", "true")}
secs = {c: [round(h["seconds"], 1) for h in m["history"]] for c, m in runs.items()}
later = lambda s: sum(s[1:]) / max(len(s) - 1, 1)
rec = {"command": "experiments/frozen_cache.sh", "task": "pos (719 train, 80 dev sentences)",
       "model": "minilm-l6 alad-frozen n5, seed 13", "epoch_seconds_uncached": secs["false"],
       "epoch_seconds_cached": secs["true"],
       "speedup_after_first": round(later(secs["false"]) / later(secs["true"]), 2),
       "dev_uncached": runs["false"]["dev"]["main"], "dev_cached": runs["true"]["dev"]["main"],
       "load1_start": load0, "load1_end": os.getloadavg()[0], "cpus": os.cpu_count()}
out = "experiments/results/bench/frozen_cache.json"
tmp = out + ".tmp"
json.dump(rec, open(tmp, "w"), indent=1); os.replace(tmp, out)
print(json.dumps(rec, indent=1))
PY
