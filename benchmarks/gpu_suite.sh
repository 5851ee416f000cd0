#!/usr/bin/env bash
# The GPU measurements in one run of under 8 minutes on one H100/H200, each phase with a time
# limit of its own: the shards; training speed and MFU of `base` and `big` against HF BART of
# the same size on the same batches (bucketed and packed); a profile of `base`'s training
# steps; decoding against HF generate at batch 1, 32 and 256; every modality's training speed
# beside its loader. Each phase writes its table to $OUT/<phase>.md; a phase that fails or runs out of
# time says so there, and the next one runs.
#
#   bash benchmarks/gpu_prepare.sh                # here: wheels and datasets for the GPU machine
#   bash benchmarks/gpu_suite.sh                  # there (what gpu_prepare.sh prints)
#   T2T_SUITE_TINY=1 bash benchmarks/gpu_suite.sh # the same commands at tiny sizes, on the CPU
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/gpu_suite}
DATA=${T2T_SUITE_DATA:-/tmp/t2t_suite_data}
mkdir -p "$OUT" "$DATA"

# Packages the GPU machine lacks, carried there as wheels (gpu_prepare.sh).
if [ -d .whl ] && ! python3 -c "import hydra, webdataset, RNA, soundfile" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -d .gpu_datasets ]; then
    export T2T_DATASETS=$PWD/.gpu_datasets
fi
export PYTHONUNBUFFERED=1

if [ -n "${T2T_SUITE_TINY:-}" ]; then
    device=(--device cpu --precision fp32)
    base=(--model tiny) big=(--model tiny)
    batches=(--max-tokens 512 --max-rows 64 --window 512 --batches 2 --warmup 1 --steps 2)
    compile=()
    decoding=(--decode-batch 1,4 --decode-length 8 --decode-repeats 1)
    loaders=(--model tiny --workers 0 --seconds 1 --steps 2 --max-samples 48)
    limits=(300 300 300 300 300 300)
else
    device=(--device cuda --precision bf16)
    base=(--model base) big=(--model big)
    # Multi30k-shaped batches at a GPU's size: 64k target tokens, bucketed over a whole window.
    batches=(--max-tokens 65536 --max-rows 16384 --window 65536 --batches 8 --warmup 3
             --steps 20)
    compile=(--compile layers)
    decoding=(--decode-batch 1,32,256 --decode-length 64 --decode-repeats 3)
    loaders=(--model base --workers 0,4,8 --seconds 5 --steps 10 --max-samples 4000)
    limits=(90 100 80 40 80 60)  # seconds per phase, in order: 450 in all
fi
data=(--data-dir "$DATA")

phase() {  # phase NAME SECONDS COMMAND...: the command's table into $OUT/NAME.md
    local name=$1 seconds=$2
    shift 2
    echo "== $name: $*" | tee -a "$OUT/suite.log"
    {
        echo "# $name"
        echo
        echo "    $*"
        timeout "$seconds" "$@" 2>>"$OUT/suite.log"
        local status=$?
        [ $status -eq 0 ] || echo "**phase failed (exit $status; 124: out of its ${seconds} s)**"
    } >"$OUT/$name.md"
    tail -n 30 "$OUT/$name.md"
}

# The shards first, in a phase of their own (Multi30k's SentencePiece vocabulary takes a while
# to learn), so that the measuring phases' limits go to measuring; the loaders' problems get
# fewer samples, in a folder of their own.
phase data "${limits[0]}" bash -c "python3 benchmarks/throughput.py ${device[*]} --model tiny \
    --max-tokens 512 --batches 1 --warmup 0 --steps 1 --skip hf,decode --data-dir $DATA && \
    python3 benchmarks/dataloading.py ${loaders[*]} --generate-only --data-dir $DATA/loaders"
phase train_base "${limits[1]}" python3 benchmarks/throughput.py "${device[@]}" "${base[@]}" \
    "${batches[@]}" "${compile[@]}" --packed-length 128 --loss-chunk-rows 4096,0 \
    --skip decode "${data[@]}"
phase train_big "${limits[2]}" python3 benchmarks/throughput.py "${device[@]}" "${big[@]}" \
    "${batches[@]}" "${compile[@]}" --packed-length 128 --skip decode "${data[@]}"
phase profile_base "${limits[3]}" python3 benchmarks/throughput.py "${device[@]}" "${base[@]}" \
    "${batches[@]}" "${compile[@]}" --packed-length 128 --skip hf,decode --profile "${data[@]}"
phase decode_base "${limits[4]}" python3 benchmarks/throughput.py "${device[@]}" "${base[@]}" \
    "${decoding[@]}" --decode-lengths reference --skip train "${data[@]}"
phase modalities "${limits[5]}" python3 benchmarks/dataloading.py "${device[@]}" "${loaders[@]}" \
    --data-dir "$DATA/loaders"  # fewer samples a split: apart from the shards above
echo "tables in $OUT"
