# Last call (carry .xfer/b09 .xfer/job.sh .xfer/bundle.sha), after one call per piece
# (`mv .xfer/bNN /root/parts/`, carry .xfer/bNN) within the machine's 30 s warm window:
# rebuild and check the bundle, run the cells, copy each result to $OUT as soon as it exists.
#   CELLS="--task qa" KEYS="<result keys>" T=300 bash .xfer/job.sh
set -uo pipefail
mv .xfer/b09 /root/parts/
cat /root/parts/a00 /root/parts/b0? > /root/bundle.tar
echo "$(cat .xfer/bundle.sha)  /root/bundle.tar" | sha256sum -c - || exit 3
tar -C /root -xf /root/bundle.tar && rm /root/bundle.tar
export PYTHONPATH=/tmp/site:/root/site:$PWD ALAD_CACHE_HOME=/root/alad-cache HF_HUB_OFFLINE=1 \
  HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
(while sleep 3; do for k in $KEYS; do f=$(ls results/table1/*/$k.json 2>/dev/null) && cp --update=none $f $OUT/; done; done) &
timeout ${T:-300} python3 -m alad.cli sweep run sweeps/table1.yaml $CELLS -q 2>&1 | tee $OUT/cells.log
for k in $KEYS; do f=$(ls results/table1/*/$k.json 2>/dev/null) && cp --update=none $f $OUT/; done
true
