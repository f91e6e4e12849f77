# First call (carry .whl .xfer/data .xfer/ner .xfer/a00 .xfer/setup.sh): packages and data.
set -euo pipefail
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
mkdir -p /root/parts && mv .xfer/a00 /root/parts/
mkdir -p ../shared/data/qa_squad2/split ../shared/data/ner_en
cp .xfer/data/*.json ../shared/data/qa_squad2/split/ && cp .xfer/ner/*.tsv ../shared/data/ner_en/
