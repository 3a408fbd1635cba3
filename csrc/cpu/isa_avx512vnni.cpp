// The kernels of kernels_isa.inc for the avx512vnni level: AVX-512 VNNI, int8 dot products in one
// instruction (vpdpbusd).
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
#define L2P_TARGET "avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni"
#define L2P_AVX2 1
#define L2P_AVX512 1
#define L2P_VNNI 1
#define L2P_VNNI256 1
#define L2P_DPBUSD256 _mm256_dpbusd_epi32
#endif
#define L2P_ISA_NS isa_avx512vnni
#define L2P_ISA ISA_AVX512VNNI
#include "kernels_isa.inc"
