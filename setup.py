"""Build of the C++ extension llama2py._cpu.

Project metadata lives in pyproject.toml (including the CUDA kernel sources, package data in
llama2py/backends/cuda_kernels/); this file only adds the pybind11 extension from csrc/cpu/*.cpp:
C++17, -O3, OpenMP, for the baseline of the target (no -march=native): the SIMD kernels are
compiled once per instruction-set level (isa_*.cpp, each with its target) and the best level the CPU
supports is chosen when the extension loads, so every build is portable and as fast as a native
one (LLAMA2PY_PORTABLE=1, for wheels, is accepted and changes nothing).
LLAMA2PY_SANITIZE=1 builds it with AddressSanitizer and UBSan at -O1 instead (scripts/sanitize.sh).
"""

import glob
import os
import sys
import tempfile

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup
from setuptools.errors import CompileError, LinkError

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

OPENMP_HELP = (
    "llama2py's CPU kernels need a C++17 compiler with OpenMP, and {cc!r} cannot build an OpenMP "
    "program here ({why}). Use g++ (Debian/Ubuntu: apt install g++), or give clang its OpenMP "
    "runtime (Debian/Ubuntu: apt install libomp-dev; Fedora: dnf install libomp-devel); CC and CXX "
    "choose the compiler."
)


class BuildWithOpenMP(build_ext):
    """build_ext that first compiles and links a two-line OpenMP program, so a compiler without
    OpenMP fails with what to install instead of 'omp.h' file not found deep in the kernels."""

    def build_extensions(self):
        if sys.platform != "win32":
            self._check_openmp()
        super().build_extensions()

    def _check_openmp(self):
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "omp_check.cpp")
            with open(src, "w") as f:
                f.write("#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
            try:
                # (the build's own flags, _cpu_flags: the one place that names OpenMP's)
                objects = self.compiler.compile([src], output_dir=tmp, extra_postargs=compile_args)
                self.compiler.link_executable(objects, "omp_check", output_dir=tmp, extra_postargs=link_args)
            except (CompileError, LinkError) as e:
                cc = (getattr(self.compiler, "compiler_cxx", None) or ["the C++ compiler"])[0]
                why = "omp.h not found" if isinstance(e, CompileError) else "no OpenMP runtime to link"
                raise SystemExit("error: " + OPENMP_HELP.format(cc=cc, why=why)) from None


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
    cmdclass={"build_ext": BuildWithOpenMP},
)
