#!/usr/bin/env bash
# One prepared command that measures gpuale on a GPU machine: run it first whenever a GPU
# is lent. From the repository root:
#
#   bash bench/gpu_check.sh [OUT_DIR]        (default: $OUT, else ./gpu-check-out)
#
# It needs a bare, offline machine with python3, numpy, scipy, numba, typer, rich, pytest,
# pytest-benchmark, CuPy, nvcc, compute-sanitizer and ncu (the workplace's GPU image has
# them). Anything else travels as wheels in .whl/ beside the source tree (ignored by git);
# make them here with:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl nibabel==5.3.2
#
# Steps, each with its own time limit so the whole stays under 10 minutes (9.5 at most):
#   1. environment (card, driver, CuPy), 2. the gpu-marked tests, 3. compute-sanitizer
#   memcheck, initcheck and synccheck on a small run, 4. throughput: children, adults and a
#   2,000-experiment synthetic set, 10,000 permutations each (compilation excluded), the
#   CPU engine beside them, CPU = GPU on the first permutations, 5. an ncu summary of the
#   scatter kernel, 6. the cost of a permutation at the whole Neurosynth release's size
#   (14,371 studies, 1,024 permutations) and the projected time of 10,000 on 1, 2, 4 and 8
#   GPUs over Dask (bench/gpu_bench.py --projection), 7. SCALE at the bench MACM's size
#   (356 experiments, 27,244 foci, a 507,891-focus pool) with its projected time of 10,000
#   permutations and CPU = GPU counts (bench/scale_gpu.py). Everything goes to OUT_DIR;
#   OUT_DIR/gpu-check.md is the summary.
# Without a GPU it says so and exits 0; `bash bench/gpu_check.sh --dry-run` checks the
# script itself on the CPU (the kernels through the host shim).
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT_DIR=${1:-${OUT:-gpu-check-out}}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
SUMMARY="$OUT_DIR/gpu-check.md"
export PYTHONUNBUFFERED=1

if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/gpuale-site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/gpuale-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to OUT_DIR/NAME.log
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    echo "== $name (limit ${limit}s)"
    timeout "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT_DIR/$name.log"
    printf '| %s | %s | %ss |\n' "$name" "$([ $rc -eq 0 ] && echo ok || echo "FAILED (exit $rc)")" \
        "$((SECONDS - start))" >>"$SUMMARY.steps"
    return $rc
}

: >"$SUMMARY.steps"
{
    echo "# gpuale GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo '```'
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true
    $PY -c "import sys; sys.path.insert(0, 'bench'); import gpu_bench; print(gpu_bench.environment())" 2>&1
    echo '```'
} >"$SUMMARY"

if [ $DRY -eq 1 ]; then
    step throughput 300 $PY bench/gpu_bench.py --dry-run --json "$OUT_DIR/throughput.json"
    step projection 120 $PY bench/gpu_bench.py --projection --dry-run --studies 200 \
        --json "$OUT_DIR/projection.json"
    step scale 120 $PY bench/scale_gpu.py --dry-run --json "$OUT_DIR/scale.json"
    echo "(dry run: kernels on the CPU through the host shim; sanitizers and ncu not run)" >>"$SUMMARY"
elif ! $PY -c "import sys; from gpuale.engines.cuda import gpu_available; sys.exit(not gpu_available())"; then
    echo "no GPU visible to CuPy: nothing measured" | tee -a "$SUMMARY"
    rm -f "$SUMMARY.steps"
    exit 0
else
    step gpu-tests 120 $PY -m pytest -q -p no:cacheprovider -m gpu tests \
        --benchmark-disable
    for tool in memcheck initcheck synccheck; do
        step "sanitizer-$tool" 45 compute-sanitizer --tool "$tool" --error-exitcode 9 \
            $PY bench/gpu_bench.py --small
    done
    step throughput 145 $PY bench/gpu_bench.py --iters 10000 --json "$OUT_DIR/throughput.json"
    step ncu 45 ncu --kernel-name regex:gpuale_log_sum --launch-skip 1 --launch-count 1 \
        --section SpeedOfLight --section MemoryWorkloadAnalysis $PY bench/gpu_bench.py --small
    step projection 90 $PY bench/gpu_bench.py --projection --projection-iters 1024 \
        --json "$OUT_DIR/projection.json"
    step scale 40 $PY bench/scale_gpu.py --iters 64 --json "$OUT_DIR/scale.json"
fi

{
    echo
    echo "| step | result | time |"
    echo "| --- | --- | --- |"
    cat "$SUMMARY.steps"
    echo
    echo "## Throughput"
    echo
    sed -n '/^| data set/,$p' "$OUT_DIR/throughput.log" 2>/dev/null
    echo
    echo "## Projection: 10,000 permutations of the whole Neurosynth release"
    echo
    sed -n '/^projection: /,$p' "$OUT_DIR/projection.log" 2>/dev/null
    echo
    echo "## SCALE at the bench MACM's size"
    echo
    grep '^scale: ' "$OUT_DIR/scale.log" 2>/dev/null
} >>"$SUMMARY"
rm -f "$SUMMARY.steps"
echo
cat "$SUMMARY"
