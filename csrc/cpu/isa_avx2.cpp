// The kernels of kernels_isa.inc for the avx2 level: AVX2 + FMA.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#define L2P_TARGET "avx2,fma"
#define L2P_AVX2 1
#endif
#define L2P_ISA_NS isa_avx2
#define L2P_ISA ISA_AVX2
#include "kernels_isa.inc"
