"""Build of the C++ extension llama2py._cpu.

Project metadata lives in pyproject.toml (including the CUDA kernel sources, package data in
llama2py/backends/cuda_kernels/); this file only adds the pybind11 extension from csrc/cpu/*.cpp:
C++17, -O3, OpenMP, for the baseline of the target (no -march=native): the SIMD kernels are
compiled once per instruction-set level (isa_*.cpp, target pragmas) and the best level the CPU
supports is chosen when the extension loads, so every build is portable and as fast as a native
one (LLAMA2PY_PORTABLE=1, for wheels, is accepted and changes nothing).
LLAMA2PY_SANITIZE=1 builds it with AddressSanitizer and UBSan at -O1 instead (scripts/sanitize.sh).
"""

import glob
import os
import sys

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _cpu_flags():
    if sys.platform == "win32":
        return ["/O2", "/openmp", "/std:c++17"], []
    # -ffp-contract=off: no implicit FMA contraction, so the same scalar expression rounds the same
    # wherever it is inlined (fused and separate kernels stay bitwise equal); explicit FMAs remain.
    compile_args = ["-O3", "-fopenmp", "-fno-math-errno", "-ffp-contract=off"]
    if os.environ.get("LLAMA2PY_SANITIZE", "") not in ("", "0"):  # scripts/sanitize.sh: ASan + UBSan
        san = ["-fsanitize=address,undefined,float-cast-overflow", "-fno-sanitize-recover=all"]
        compile_args = [a for a in compile_args if a != "-O3"] + ["-O1", "-g", "-fno-omit-frame-pointer"] + san
        return compile_args, ["-fopenmp"] + san[:1]
    return compile_args, ["-fopenmp"]


compile_args, link_args = _cpu_flags()

ext_modules = [
    Pybind11Extension(
        "llama2py._cpu",
        sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, "csrc", "cpu", "*.cpp"))),
        include_dirs=[os.path.join("csrc", "cpu")],
        depends=sorted(
            os.path.relpath(p, HERE)
            for pattern in ("*.h", "*.inc")
            for p in glob.glob(os.path.join(HERE, "csrc", "cpu", pattern))
        ),
        cxx_std=17,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    ),
]


setup(
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext},
)
