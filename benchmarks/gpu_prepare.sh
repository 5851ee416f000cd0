#!/usr/bin/env bash
# Run here, before a lent GPU machine runs benchmarks/gpu_suite.sh: that machine reaches no
# network and its Python (3.12, with torch, Lightning, transformers) lacks some of t2t's
# packages. This puts their wheels in .whl/ and the local dataset copies in .gpu_datasets/,
# both ignored by git (.git/info/exclude), for the run to carry; gpu_suite.sh installs and
# uses them. Prints the device call to make.
set -euo pipefail
cd "$(dirname "$0")/.."
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
for folder in .whl .gpu_datasets; do
    grep -qx "/$folder/" "$exclude" 2>/dev/null || echo "/$folder/" >>"$exclude"
done
rm -rf .whl && mkdir -p .whl
platforms=()
for n in 2_28 2_27 2_24 2_17 2014; do
    [ "$n" = 2014 ] && platforms+=(--platform manylinux2014_x86_64) \
        || platforms+=(--platform "manylinux_${n}_x86_64")
done
# The versions installed here, which t2t's tests passed with.
packages=$(python3 -c 'import importlib.metadata as m; print(" ".join(f"{n}=={m.version(n)}" for n in
    "hydra-core omegaconf webdataset braceexpand ViennaRNA soundfile cffi pycparser".split()))')
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl $packages
# omegaconf's parser runtime is published as source only; it is pure Python.
python3 -m pip wheel -q --no-deps -w .whl "antlr4-python3-runtime==4.9.3"
datasets=${T2T_DATASETS:-../shared/datasets}
rm -rf .gpu_datasets && mkdir -p .gpu_datasets
cp -r "$datasets"/multi30k "$datasets"/mnist "$datasets"/fsdd .gpu_datasets/
du -sh .whl .gpu_datasets
echo 'device run: command "bash benchmarks/gpu_suite.sh", carry [".whl", ".gpu_datasets"]'
