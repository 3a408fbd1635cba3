// The kernels of kernels_isa.inc for the avx512 level: AVX-512 (F, BW, VL, DQ), i.e. the AVX2
// kernels with 32 vector registers and EVEX encodings.
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
#define L2P_TARGET "avx2,fma,avx512f,avx512bw,avx512vl,avx512dq"
#define L2P_AVX2 1
#define L2P_AVX512 1
#endif
#define L2P_ISA_NS isa_avx512
#define L2P_ISA ISA_AVX512
#include "kernels_isa.inc"
