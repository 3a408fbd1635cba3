#!/usr/bin/env bash
# Build the C++ extension with AddressSanitizer and UBSan into a separate folder (the normal build
# is untouched) and run the cpu kernel and backend tests, and the hostile-input tests, against it.
#   scripts/sanitize.sh [extra pytest args]      (run by .ci/run; a few minutes on 2 cores)
# Any ASan report or UBSan finding fails the run (halt_on_error). Leak detection is off: Python
# itself leaks by design at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
BUILD="build/sanitize"
PKG="$BUILD/pkg"
rm -rf "$PKG" && mkdir -p "$PKG"
# the package's Python files, then the sanitized extension next to them
tar -C . --exclude='*.so' --exclude='__pycache__' -cf - llama2py | tar -C "$PKG" -xf -
# float-cast-overflow is not part of GCC's -fsanitize=undefined; it catches NaN -> int conversions.
SAN="-fsanitize=address,undefined,float-cast-overflow -fno-omit-frame-pointer -fno-sanitize-recover=all -g"
CFLAGS="$SAN" CXXFLAGS="$SAN" LDFLAGS="-fsanitize=address,undefined" \
    nice -n 10 "$PY" setup.py -q build_ext --build-lib "$PKG" --build-temp "$BUILD/tmp" >/dev/null
CXX_RT="$(${CXX:-g++} -print-file-name=libasan.so)"
export LD_PRELOAD="$CXX_RT"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export PYTHONPATH="$PWD/$PKG${PYTHONPATH:+:$PYTHONPATH}"
export LLAMA2PY_REQUIRE_CPU=1
"$PY" -c "import llama2py, llama2py._cpu as c; assert '$PKG' in c.__file__, c.__file__; print('sanitized build:', c.__file__)"
"$PY" -m pytest -q -p no:cacheprovider tests/test_cpu_backend.py tests/test_hostile.py -k "not numpy_only" "$@"
