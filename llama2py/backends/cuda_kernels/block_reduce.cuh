// llama2py CUDA kernels: the block-wide reductions forward.cu and sample.cu share.
//
// Deterministic: a fixed shuffle butterfly inside each warp, then the same over the warps' results
// in warp order, so the same inputs always give the same bits. Every thread of the block calls a
// block reduction (it has barriers); blockDim.x is a multiple of 32. `shared` holds REDUCE_SLOTS
// (33) values: one per warp (at most 32) and the result. REDUCE_SLOTS comes from
// llama2py/backends/cuda.py (KERNEL_CONSTANTS), which also sizes shared memory with it.
#ifndef LLAMA2PY_BLOCK_REDUCE_CUH
#define LLAMA2PY_BLOCK_REDUCE_CUH

#ifndef REDUCE_SLOTS
#error "REDUCE_SLOTS is not defined: pass -DREDUCE_SLOTS=... from llama2py/backends/cuda.py KERNEL_CONSTANTS"
#endif

#define WARP_FULL 0xffffffffu
#define NEG_INF __int_as_float(0xff800000)
#define POS_INF __int_as_float(0x7f800000)
#define BIG_INT 0x7fffffff

struct OpAdd {
    template <class T>
    __device__ __forceinline__ T operator()(T a, T b) const {
        return a + b;
    }
};
struct OpMaxF {
    __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct OpMinI {
    __device__ __forceinline__ int operator()(int a, int b) const { return min(a, b); }
};

// Every lane of the warp gets op over the warp's 32 values.
template <class T, class Op>
static __device__ __forceinline__ T warp_reduce(T v, Op op) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(WARP_FULL, v, o));
    return v;
}

static __device__ __forceinline__ float warp_sum(float v) {
    return warp_reduce(v, OpAdd{});
}

// op over the whole block; warps past the last one contribute `identity`.
template <class T, class Op>
static __device__ T block_reduce(T v, T* shared, Op op, T identity) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    v = warp_reduce(v, op);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    if (warp == 0) {
        T t = lane < n_warps ? shared[lane] : identity;
        t = warp_reduce(t, op);
        if (lane == 0) shared[REDUCE_SLOTS - 1] = t;
    }
    __syncthreads();
    return shared[REDUCE_SLOTS - 1];
}

static __device__ float block_sum(float v, float* shared) {
    return block_reduce(v, shared, OpAdd{}, 0.f);
}
static __device__ int block_sum(int v, int* shared) {
    return block_reduce(v, shared, OpAdd{}, 0);
}
static __device__ float block_max(float v, float* shared) {
    return block_reduce(v, shared, OpMaxF{}, NEG_INF);
}
static __device__ float block_min(float v, float* shared) {
    return -block_max(-v, shared);
}
static __device__ int block_min(int v, int* shared) {
    return block_reduce(v, shared, OpMinI{}, BIG_INT);
}

#endif  // LLAMA2PY_BLOCK_REDUCE_CUH
