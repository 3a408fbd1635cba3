#!/usr/bin/env bash
# Build the C++ extension with AddressSanitizer and UBSan into a separate folder (the normal build
# is untouched) and run the cpu kernel and backend tests, the hostile-input tests and the header
# fuzzer against it, in this process (the CLI subprocess tests are left to the normal run). -s: a
# sanitizer report ends the process, and pytest's capture would swallow it.
#   scripts/sanitize.sh [extra pytest args]      (run by .ci/run; a few minutes on 2 cores)
# Any ASan report or UBSan finding fails the run (halt_on_error, no recovery). Leak detection is
# off: Python itself leaks by design at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PY="${PYTHON:-python}"
BUILD="$ROOT/build/sanitize"
PKG="$BUILD/pkg"
SRC="$BUILD/src"
rm -rf "$PKG" "$SRC" && mkdir -p "$PKG" "$SRC"
# A clean copy of the sources (no earlier build output that setuptools could reuse unsanitized),
# built as pip builds it (its own build environment: pyproject's build requirements) and installed
# into $PKG only. LLAMA2PY_SANITIZE=1: setup.py adds -fsanitize=address,undefined,float-cast-overflow
# (GCC's "undefined" leaves out float-cast-overflow, which catches NaN -> int), at -O1 -g.
tar -C "$ROOT" --exclude=./build --exclude=./.venv --exclude=./.git --exclude='*.so' --exclude='__pycache__' \
    --exclude='*.egg-info' -cf - . | tar -C "$SRC" -xf -
LLAMA2PY_SANITIZE=1 nice -n 10 "$PY" -m pip install -q --no-deps --no-compile --target "$PKG" "$SRC"
# ldd's output is read whole first: `ldd | grep -q` under pipefail fails when grep exits at its
# match before the loader has written its last lines (SIGPIPE; 131 in 1,000 on a loaded machine).
deps="$(ldd "$PKG"/llama2py/_cpu*.so)"
grep -q libasan <<<"$deps" || { echo "sanitize.sh: the extension is not sanitized:" >&2; echo "$deps" >&2; exit 1; }
# libstdc++ preloaded too: python is no C++ program, and ASan's __cxa_throw interceptor needs the
# real one resolved at start (else the first C++ exception is "CHECK failed: real___cxa_throw").
LD_PRELOAD="$(${CXX:-g++} -print-file-name=libasan.so) $(${CXX:-g++} -print-file-name=libstdc++.so)"
export LD_PRELOAD
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export PYTHONPATH="$PKG${PYTHONPATH:+:$PYTHONPATH}"
export LLAMA2PY_REQUIRE_CPU=1
cd "$BUILD" # not the source folder: its llama2py (the normal build) would shadow the sanitized one
"$PY" -c "import llama2py._cpu as c; assert c.__file__.startswith('$PKG'), c.__file__; print('sanitized:', c.__file__)"
"$PY" -m pytest -q -s -p no:cacheprovider --rootdir "$ROOT" -c "$ROOT/pyproject.toml" \
    "$ROOT/tests/test_cpu_backend.py" "$ROOT/tests/test_q8.py" "$ROOT/tests/test_isa.py" "$ROOT/tests/test_hostile.py" \
    "$ROOT/tests/test_fuzz.py" \
    -k "not cli and not non_regular and not unreadable and not chat_with and not missing_extension" "$@"
