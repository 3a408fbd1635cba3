// The avxvnni level's kernels for CPUs with AVX-512 VNNI (and VL) instead of AVX-VNNI: the same
// source as isa_avxvnni.cpp with the EVEX encoding of the 256-bit vpdpbusd, so that the level runs,
// and its tests run, on those CPUs too. No 512-bit kernel is compiled here (L2P_AVX512 unset).
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
#define L2P_TARGET "avx2,fma,avx512f,avx512vl,avx512vnni"
#define L2P_AVX2 1
#define L2P_VNNI256 1
#define L2P_DPBUSD256 _mm256_dpbusd_epi32
#endif
#define L2P_ISA_NS isa_avxvnni_evex
#define L2P_ISA ISA_AVXVNNI
#include "kernels_isa.inc"
