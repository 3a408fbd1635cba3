// The kernels of kernels_isa.inc for the avxvnni level: AVX2 + FMA with AVX-VNNI, the 256-bit
// VEX-encoded vpdpbusd (Intel's cores without AVX-512 since Alder Lake, AMD's Zen 5). A compiler
// without the avxvnni target (kernels.h, L2P_HAVE_AVXVNNI_TARGET) builds plain code here that is
// never chosen; the level then runs only where isa_avxvnni_evex.cpp's encoding does.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "kernels.h"

#if (defined(__x86_64__) || defined(__i386__)) && L2P_HAVE_AVXVNNI_TARGET
#define L2P_TARGET "avx2,fma,avxvnni"
#define L2P_AVX2 1
#define L2P_VNNI256 1
#define L2P_DPBUSD256 _mm256_dpbusd_avx_epi32
#endif
#define L2P_ISA_NS isa_avxvnni
#define L2P_ISA ISA_AVXVNNI
#include "kernels_isa.inc"
