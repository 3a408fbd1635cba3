// The kernels of kernels_isa.inc for the generic level: plain C++ (the compiler's baseline, SSE2 on x86-64).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels.h"
#define L2P_ISA_NS isa_generic
#define L2P_ISA ISA_GENERIC
#include "kernels_isa.inc"
