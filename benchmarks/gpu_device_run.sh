#!/usr/bin/env bash
# Every GPU measurement of one borrowed-machine session, in one command of at most ~575 s (docs/scale.md).
#
#   bash benchmarks/gpu_device_run.sh            # in the repository root on the GPU machine; results in $OUT (or runs/gpu-out)
#
# Needs, copied beside the repository (git-ignored, sent with the run): local-data/fashion-mnist/ (the four IDX .gz
# files) and, where the machine lacks them, .whl/ (pydantic, clean-fid, ... as wheels for its Python). In order, each
# with its own time limit so that a slow part cannot starve the others:
#   1. benchmarks/gpu_suite.py: train-prior (capture on/off, one CPU thread), sampling, FID network, TF32, the sweep;
#   2. benchmarks/backbone_throughput.py: training images/s of hvae, nvae and vlae on the GPU;
#   3. benchmarks/pipeline_gpu.py: the whole Fashion-MNIST pipeline (defaults, FID at N = 5,000), with what is left.
# A dry run of the script's logic on any machine: SUITE_ARGS=--smoke THROUGHPUT_ARGS="--steps 1 --families hvae"
# PIPELINE_CONFIG=<a tiny pipeline TOML> bash benchmarks/gpu_device_run.sh
set -u
OUT=${OUT:-runs/gpu-out}
PIPELINE_CONFIG=${PIPELINE_CONFIG:-benchmarks/pipeline_gpu_fashion.toml}
BUDGET_S=${BUDGET_S:-575}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
LOG=$OUT/log.txt
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    nproc
    python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name(0))"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

left() { echo $((BUDGET_S - SECONDS)); }

timeout 230 python3 benchmarks/gpu_suite.py ${SUITE_ARGS:-} --data fashion-mnist:local-data/fashion-mnist --out "$OUT/gpu_suite.json" >> "$LOG" 2>&1
echo "suite done at ${SECONDS}s (rc $?)" | tee -a "$LOG"
grep '"section"' "$LOG" | cut -c1-400

timeout 45 python3 benchmarks/backbone_throughput.py ${THROUGHPUT_ARGS:-} --data-root local-data --name backbone_throughput_fashion_gpu >> "$LOG" 2>&1
cp benchmarks/results/backbone_throughput_fashion_gpu.json "$OUT/" 2>/dev/null
echo "throughput done at ${SECONDS}s" | tee -a "$LOG"

timeout "$(left)" python3 benchmarks/pipeline_gpu.py --config "$PIPELINE_CONFIG" \
    --out "$OUT/pipeline_gpu_fashion.json" > "$OUT/pipeline.log" 2>&1
echo "pipeline done at ${SECONDS}s (rc $?)" | tee -a "$LOG"
tail -c 3000 "$OUT/pipeline.log"
