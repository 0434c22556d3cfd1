#!/usr/bin/env bash
# gpuale's GPU check: the one prepared command to run first whenever a GPU is lent.
#
# Run it as ONE call of the device tool, from the repository root of the checkout that
# holds this version (the tree that travels is the session's own checkout):
#
#   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=420)
#
# What must travel: the working tree (it always does) and .whl/, which git ignores, so it
# travels only when `carry` names it. The GPU image has Python 3.12 with numpy, scipy,
# numba, typer, rich, pytest, pytest-benchmark and CuPy (cupy-cuda13x), and nvcc,
# compute-sanitizer and ncu; it lacks nibabel, which gpuale needs. Make nibabel's wheel
# here, once, in the repository root, for the GPU machine's Python (3.12 on x86-64;
# nibabel is pure Python, and what it needs, numpy, packaging and typing_extensions, is
# in the image):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl nibabel==5.4.2
#
# `ls .whl` then shows nibabel-5.4.2-py3-none-any.whl. Another missing package travels the
# same way (`unzip -p .whl/NAME-*.whl '*/METADATA' | grep ^Requires-Dist` lists its needs;
# one version of each).
#
# Step limits add up to 360 s (environment, install and probes included), so with the
# 1-2 minutes a machine takes to start, a failed first try can be rerun within the 15
# minutes of one lease. Steps, each under its own limit (LIMIT below):
#   env           nvidia-smi: card, driver, clocks
#   install       the wheels of .whl/ into a scratch folder on PYTHONPATH (when it holds
#                 any; GPU_CHECK_WHEELS names another folder)
#   probe-*       import nibabel, import gpuale, import cupy, then the device (and the
#                 kernels compiled by NVRTC), one by one: a failure prints its traceback,
#                 names what is missing, writes it into the summary and ends the check
#                 (exit 2); "no GPU" is said only when CuPy imports and sees no device
#                 (exit 3)
#   gpu-tests     the gpu-marked tests (GPU = host shim bit for bit, compare --devices)
#   memcheck      compute-sanitizer memcheck and initcheck on one batch of the global
#   initcheck     null with CuPy's memory pool off, so every array is its own cudaMalloc
#                 (bench/gpu_bench.py --small --no-pool)
#   throughput    children and adults, 10,000 permutations each, and a 2,000-experiment
#                 set (2,048, scaled to 10,000), beside the CPU engine, CPU = GPU on the
#                 first 32 permutations (bench/gpu_bench.py; a row as each set ends)
#   ncu           Nsight Compute on the scatter launch of --small, --clock-control none
#                 (the card's clocks are left as they are)
#   projection    seconds per permutation at the whole Neurosynth release's size
#                 (14,371 studies, cluster-forming threshold given: nothing is fitted on
#                 the CPU), and 10,000 permutations projected on 1, 2, 4 and 8 GPUs
#   scale         SCALE's null at the bench MACM's size (356 experiments, 27,244 foci, a
#                 507,891-focus pool): 64 permutations, 10,000 projected on one GPU, and
#                 GPU counts equal to the numba engine's on the first 8 (bench/scale_gpu.py)
#   cbp           co-activation-based parcellation at the whole release's size (a synthetic
#                 5,000-experiment pool, 1,000 ROI voxels x filters n = 20..200 step 20:
#                 10,000 MACM maps): whole chunks of columns timed for ~4 s, the maps and
#                 correlations of all 228,483 columns projected on one GPU, the pool's
#                 terms equal to the numba engine's bit for bit and the maps within 2e-7 on
#                 a smaller spec, K = 2..9 clustering timed on the host where scikit-learn
#                 is installed (bench/cbp_gpu.py)
#
# Output in OUT_DIR, at most 8 files whatever happens (6, and a *.tmp while one is
# rewritten):
#   gpu-check.md         the summary, rewritten as each step ends
#   gpu-check-logs.txt   every step's log, appended as each step ends
#   throughput.json      the throughput rows, rewritten as each data set ends
#   projection.json      the projection
#   scale.json           SCALE's throughput and its CPU = GPU check
#   cbp.json             CBP's timing, projection and CPU = GPU check
#
# Usage: bash bench/gpu_check.sh [--dry-run] [OUT_DIR]   (default: $OUT, else ./gpu-check-out)
# --dry-run checks the script on a machine without a GPU: the probes (CuPy optional),
# then throughput, projection, scale and cbp with the kernels on the CPU through the
# host shim, at small sizes.
# Exit status: 0 every step ok, 1 a step failed, 2 a probe failed, 3 no GPU.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT_DIR=${1:-${OUT:-gpu-check-out}}
mkdir -p "$OUT_DIR" || exit 1
PY=${PYTHON:-python3}
WHEELS=${GPU_CHECK_WHEELS:-.whl}
SUMMARY="$OUT_DIR/gpu-check.md"
LOGS="$OUT_DIR/gpu-check-logs.txt"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX") || exit 1
trap 'rm -rf "$WORK"' EXIT
export PYTHONUNBUFFERED=1
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# Seconds per step on the GPU machine; their sum is the header's "Step limits add up to".
declare -A LIMIT=(
    [env]=5 [install]=10 [probe-nibabel]=5 [probe-gpuale]=10 [probe-cupy]=10
    [probe-device]=20 [gpu-tests]=55 [memcheck]=25 [initcheck]=25 [throughput]=75 [ncu]=30
    [projection]=35 [scale]=25 [cbp]=30
)
# A dry run is the host shim on a CPU: far slower, and nothing depends on its time.
DRY_LIMIT=600
# Most bytes of one step's log kept in the combined log (its start and its end).
LOG_KEEP=1000000

: >"$WORK/steps.md"
: >"$WORK/problems.md"
: >"$LOGS"
FAILED=0

write_summary() {  # the summary from what the steps left so far, renamed into place
    {
        echo "# gpuale GPU check, $STARTED"
        echo
        if [ $DRY -eq 1 ]; then
            echo "Dry run: kernels on the CPU through the host shim; sanitizers, ncu and the"
            echo "gpu-marked tests not run. No figure here is a GPU figure."
        else
            echo "GPU run (bench/gpu_check.sh). Card, driver and CuPy:"
        fi
        echo
        echo '```'
        cat "$WORK/env.log" 2>/dev/null
        sed -n 's/^device: //p' "$WORK/probe-device.log" 2>/dev/null
        sed -n 's/^gpuale: /gpuale /p' "$WORK/probe-gpuale.log" 2>/dev/null
        echo '```'
        if [ -s "$WORK/problems.md" ]; then
            echo
            echo "## Problems"
            echo
            cat "$WORK/problems.md"
        fi
        echo
        echo "| step | limit | result | time |"
        echo "| --- | --- | --- | --- |"
        cat "$WORK/steps.md"
        if [ -s "$WORK/throughput.log" ]; then
            echo
            echo "## Throughput"
            echo
            grep '^|' "$WORK/throughput.log"
        fi
        if [ -s "$WORK/projection.log" ]; then
            echo
            echo "## Projection: 10,000 permutations of the whole Neurosynth release"
            echo
            sed -n '/^projection: /,$p' "$WORK/projection.log"
        fi
        if [ -s "$WORK/scale.log" ]; then
            echo
            echo "## SCALE at the bench MACM's size"
            echo
            grep '^scale: ' "$WORK/scale.log"
        fi
        if [ -s "$WORK/cbp.log" ]; then
            echo
            echo "## CBP: 1,000 voxels x 10 filter sizes at the whole release's size"
            echo
            grep '^cbp: ' "$WORK/cbp.log"
        fi
        if [ -s "$WORK/memcheck.log" ] || [ -s "$WORK/initcheck.log" ]; then
            echo
            echo "## compute-sanitizer (CuPy's memory pool off)"
            echo
            echo '```'
            grep -H 'ERROR SUMMARY' "$WORK/memcheck.log" "$WORK/initcheck.log" 2>/dev/null |
                sed "s|^$WORK/||; s|\.log:| |"
            echo '```'
        fi
        if [ -s "$WORK/ncu.log" ]; then
            echo
            echo "## ncu: gpuale_log_sum_scatter"
            echo
            echo '```'
            grep -E 'gpuale_log_sum_scatter|Duration|Throughput|Registers Per Thread|Achieved Occupancy|Theoretical Occupancy|Block Limit Registers|L1/TEX Hit|L2 Hit|SM Frequency|DRAM Frequency' \
                "$WORK/ncu.log" | head -n 40
            echo '```'
        fi
    } >"$SUMMARY.tmp" && mv -f "$SUMMARY.tmp" "$SUMMARY"
}

problem() {  # problem TEXT: a line of the summary's Problems, and on stderr
    echo "- $1" >>"$WORK/problems.md"
    echo "PROBLEM: $1" >&2
}

step() {  # step NAME COMMAND...: run under NAME's limit; log to WORK, then to LOGS
    local name=$1
    shift
    local limit=${LIMIT[$name]:-60}
    [ $DRY -eq 1 ] && limit=$DRY_LIMIT
    local start=$SECONDS rc result
    echo "== $name (limit ${limit}s)"
    timeout -k 2 "$limit" "$@" >"$WORK/$name.log" 2>&1
    rc=$?
    if [ $rc -eq 0 ]; then
        result=ok
        tail -n 15 "$WORK/$name.log"
    else
        [ $rc -eq 124 ] && result="FAILED (time limit ${limit}s)" || result="FAILED (exit $rc)"
        tail -n 40 "$WORK/$name.log"
    fi
    {
        echo "==== $name: $result after $((SECONDS - start))s (limit ${limit}s)"
        local size
        size=$(wc -c <"$WORK/$name.log")
        if [ "$size" -gt $((2 * LOG_KEEP)) ]; then
            head -c "$LOG_KEEP" "$WORK/$name.log"
            echo
            echo "[... $((size - 2 * LOG_KEEP)) bytes left out ...]"
            tail -c "$LOG_KEEP" "$WORK/$name.log"
        else
            cat "$WORK/$name.log"
        fi
        echo
    } >>"$LOGS"
    printf '| %s | %ss | %s | %ss |\n' "$name" "$limit" "$result" "$((SECONDS - start))" \
        >>"$WORK/steps.md"
    write_summary
    return $rc
}

fail_step() {  # fail_step NAME TEXT: a step that ran but did not do its job
    sed -i "s/^| $1 | \([^|]*\) | ok |/| $1 | \1 | FAILED ($2) |/" "$WORK/steps.md"
    problem "$1: $2"
    FAILED=1
    write_summary
}

missing_hint() {  # what to do about a missing module
    case $1 in
        nibabel)
            local where="no nibabel wheel in $WHEELS/"
            [ -d "$WHEELS" ] || where="$WHEELS/ is not here: the run's carry did not name it"
            echo "nibabel is missing ($where). The GPU image lacks it: make its wheel" \
                "in .whl/ as the header of bench/gpu_check.sh says, and run with" \
                "carry=[\".whl\"]" ;;
        cupy)
            echo "CuPy is missing or broken: the GPU image has cupy-cuda13x; elsewhere" \
                "pip install '.[gpu]' (CUDA 12) or '.[gpu-cuda13]' (CUDA 13)" ;;
        *)
            echo "Python module '$1' is missing: carry its wheel in .whl/ (see the header)" ;;
    esac
}

probe() {  # probe WHAT CODE: a probe step; on failure name what is missing
    local what=$1 code=$2
    if step "probe-$what" "$PY" -c "$code"; then return 0; fi
    local module
    module=$(grep -o "No module named '[^']*'" "$WORK/probe-$what.log" | tail -n 1 |
        sed "s/No module named '\([^'.]*\).*'/\1/")
    grep -q 'gpuale-check-missing: nibabel' "$WORK/probe-$what.log" && module=nibabel
    [ -z "$module" ] && [ "$what" != gpuale ] && [ "$what" != device ] && module=$what
    if [ -n "$module" ]; then
        problem "probe $what failed: $(missing_hint "$module") (traceback in gpu-check-logs.txt)"
    else
        problem "probe $what failed: see its traceback in gpu-check-logs.txt"
    fi
    return 1
}

finish() {  # finish STATUS: the last summary, the file count, the exit
    write_summary
    local files
    files=$(find "$OUT_DIR" -type f | wc -l)
    [ "$files" -gt 8 ] && echo "WARNING: $files files in $OUT_DIR; only 8 come back" >&2
    echo
    cat "$SUMMARY"
    exit "$1"
}

write_summary  # a summary from the start, whatever stops the check later

# -- environment
if [ $DRY -eq 0 ]; then
    step env nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
        --format=csv || problem "nvidia-smi failed (see gpu-check-logs.txt)"
fi

# -- wheels that travelled in .whl/
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    if ! step install "$PY" -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target "$WORK/site" "$WHEELS"/*.whl; then
        problem "the wheels in $WHEELS/ did not install (see gpu-check-logs.txt)"
        finish 2
    fi
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# -- probes, one by one
PROBES_OK=1
probe nibabel 'import nibabel; print("nibabel", nibabel.__version__, nibabel.__file__)' ||
    PROBES_OK=0
probe gpuale '
import sys, traceback
try:
    import gpuale, gpuale.analysis, gpuale.engines.cuda, gpuale.runfolder  # runfolder: NIfTI
except ImportError as error:
    traceback.print_exc()
    frames = traceback.extract_tb(error.__traceback__)
    if (getattr(error, "name", None) == "nibabel" or "nibabel" in str(error)
            or any("nibabel" in frame.filename for frame in frames)):
        print("gpuale-check-missing: nibabel")
    sys.exit(1)
import numpy, scipy, numba
print(f"gpuale: {gpuale.__version__}, Python {sys.version.split()[0]}, numpy "
      f"{numpy.__version__}, scipy {scipy.__version__}, numba {numba.__version__}")' ||
    PROBES_OK=0
if [ $DRY -eq 1 ]; then
    if ! "$PY" -c 'import cupy' >/dev/null 2>&1; then
        echo "(dry run: CuPy is not installed here, and not needed)"
    fi
    [ $PROBES_OK -eq 1 ] || finish 2
else
    probe cupy 'import cupy; print("cupy", cupy.__version__)' || PROBES_OK=0
    [ $PROBES_OK -eq 1 ] || finish 2
    probe device '
import sys
import cupy
try:
    count = cupy.cuda.runtime.getDeviceCount()
except cupy.cuda.runtime.CUDARuntimeError as error:
    if "NoDevice" not in str(error):
        raise
    count = 0
if count == 0:
    print("gpu-check: no GPU visible to CuPy")
    sys.exit(3)
props = cupy.cuda.runtime.getDeviceProperties(0)
x = cupy.arange(1 << 20, dtype=cupy.float64)
assert float(x.sum()) == (1 << 20) * ((1 << 20) - 1) / 2
from gpuale.engines.cuda import _null_module
_null_module(0)  # the kernels compiled by NVRTC (and cached on disk for later steps)
cupy.cuda.Device(0).synchronize()
name, sms = props["name"].decode(), props["multiProcessorCount"]
capability = "{}.{}".format(props["major"], props["minor"])
driver = cupy.cuda.runtime.driverGetVersion()
runtime = cupy.cuda.runtime.runtimeGetVersion()
print(f"device: {name}, {count} device(s), compute capability {capability}, {sms} SMs; "
      f"driver {driver}, runtime {runtime}, CuPy {cupy.__version__}; kernels compiled")'
    rc=$?
    if [ $rc -ne 0 ]; then
        if grep -q 'gpu-check: no GPU visible to CuPy' "$WORK/probe-device.log"; then
            : >"$WORK/problems.md"
            problem "no GPU visible to CuPy: nothing measured (CuPy imports; it sees no device)"
            finish 3
        fi
        finish 2
    fi
fi

# -- the steps
if [ $DRY -eq 1 ]; then
    step throughput "$PY" bench/gpu_bench.py --dry-run --json "$OUT_DIR/throughput.json" ||
        FAILED=1
    step projection "$PY" bench/gpu_bench.py --projection --dry-run --studies 200 \
        --threshold 0.05 --seconds 0 --json "$OUT_DIR/projection.json" || FAILED=1
    step scale "$PY" bench/scale_gpu.py --dry-run --json "$OUT_DIR/scale.json" || FAILED=1
    step cbp "$PY" bench/cbp_gpu.py --dry-run --json "$OUT_DIR/cbp.json" || FAILED=1
else
    step gpu-tests "$PY" -m pytest -q -p no:cacheprovider -m gpu tests || FAILED=1
    for tool in memcheck initcheck; do
        step "$tool" compute-sanitizer --tool "$tool" --error-exitcode 9 --print-limit 20 \
            "$PY" bench/gpu_bench.py --small --no-pool || FAILED=1
    done
    step throughput "$PY" bench/gpu_bench.py --iters 10000 --json "$OUT_DIR/throughput.json" ||
        FAILED=1
    if step ncu ncu --clock-control none --kernel-name gpuale_log_sum_scatter \
        --launch-skip 0 --launch-count 1 --section SpeedOfLight \
        --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
        "$PY" bench/gpu_bench.py --small; then
        grep -q 'gpuale_log_sum_scatter' "$WORK/ncu.log" ||
            fail_step ncu "no scatter launch was profiled"
    else
        FAILED=1
    fi
    step projection "$PY" bench/gpu_bench.py --projection --seconds 15 \
        --json "$OUT_DIR/projection.json" || FAILED=1
    step scale "$PY" bench/scale_gpu.py --iters 64 --json "$OUT_DIR/scale.json" || FAILED=1
    step cbp "$PY" bench/cbp_gpu.py --seconds 4 --json "$OUT_DIR/cbp.json" || FAILED=1
fi
[ $FAILED -eq 0 ] || problem "a step failed: see the table and gpu-check-logs.txt"
finish $FAILED
