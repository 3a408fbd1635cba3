#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU, CuPy, numpy, pybind11 and pytest but no network:
# build the package, run the cuda tests (tests/test_cuda.py) and the speed benchmark
# (`llama2py bench` on random weights of stories15M's and stories110M's shapes), and end with a
# short table that names the GPU.
#
#   bash scripts/gpu_check.sh            # logs under $OUT (default /tmp/gpu_check)
#
# The real stories260K model and tok512 tokenizer come from $LLAMA2PY_MODELS, by default the
# git-ignored folder .gpu_models/ in the repository (copy them there from ../shared/models).
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT"
export LLAMA2PY_MODELS="${LLAMA2PY_MODELS:-$PWD/.gpu_models}"
PY="${PYTHON:-python3}"
T_TESTS="${GPU_CHECK_TEST_TIMEOUT:-150}"
T_BENCH="${GPU_CHECK_BENCH_TIMEOUT:-90}"
T_OTHER="${GPU_CHECK_OTHER_TIMEOUT:-40}"

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee "$OUT/gpu.txt"
$PY -c "import sys, numpy, cupy; print('python', sys.version.split()[0], 'numpy', numpy.__version__, 'cupy', cupy.__version__)"
ls "$LLAMA2PY_MODELS" 2>&1 | head

echo "== build (background: the cpu backend's C++ extension; the cuda kernels compile at run time)"
( $PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 \
  || $PY setup.py build_ext --inplace >> "$OUT/build.log" 2>&1; echo "build rc=$?" >> "$OUT/build.log" ) &
BUILD_PID=$!

echo "== tests/test_cuda.py"
t0=$(date +%s)
LLAMA2PY_CUDA_REPORT="$OUT/cuda_errors.txt" timeout "$T_TESTS" $PY -m pytest -q -ra -p no:cacheprovider \
    -k "not compile_with_nvcc" tests/test_cuda.py > "$OUT/tests.log" 2>&1
TEST_RC=$?
echo "tests rc=$TEST_RC in $(( $(date +%s) - t0 )) s"
if [ "$TEST_RC" -ne 0 ]; then tail -n 80 "$OUT/tests.log"; else tail -n 3 "$OUT/tests.log"; fi
[ -f "$OUT/cuda_errors.txt" ] && { echo "-- worst relative errors vs numpy"; grep -E "WORST|tile .* forward|^forward .* B=1:" "$OUT/cuda_errors.txt"; }

wait "$BUILD_PID"
tail -n 3 "$OUT/build.log"

echo "== benchmark (llama2py bench: greedy, positions 0..255 as run -n 256, medians of 3 with their spread)"
t0=$(date +%s)
BENCH="timeout $T_BENCH $PY -m llama2py bench --positions 0:256 --repeat 3 --quiet"
{ $BENCH --shape stories15M --device cuda --batch 1,256 --json "$OUT/bench_cuda_15M.json" \
  && $BENCH --shape stories110M --device cuda --batch 1 --json "$OUT/bench_cuda_110M.json" \
  && $BENCH --shape stories15M --device cpu --batch 1 --repeat 1 --no-profile --json "$OUT/bench_cpu_15M.json"; \
} > "$OUT/bench.log" 2>&1
BENCH_RC=$?
echo "bench rc=$BENCH_RC in $(( $(date +%s) - t0 )) s"
tail -n 40 "$OUT/bench.log"
echo "== the other test files' cuda cases (tests -k cuda)"
timeout "$T_OTHER" $PY -m pytest -q -p no:cacheprovider -k cuda tests --ignore=tests/test_cuda.py -x > "$OUT/other.log" 2>&1
OTHER_RC=$?
tail -n 15 "$OUT/other.log"
echo "== summary"
grep -E "^(llama2py bench|cpu:|device|cuda|cpu) " "$OUT/bench.log"
echo "tests rc=$TEST_RC bench rc=$BENCH_RC other rc=$OTHER_RC"
exit $(( TEST_RC != 0 || BENCH_RC != 0 ))
