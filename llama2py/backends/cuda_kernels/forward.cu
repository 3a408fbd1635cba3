// llama2py CUDA kernels: the transformer forward pass (docs/FORMAT.md, "Forward pass").
//
// Compiled at run time by NVRTC through CuPy (llama2py/backends/cuda.py) with the launch shapes
// of KERNEL_CONSTANTS there as -D defines and this folder on the include path (block_reduce.cuh);
// nvcc compile-checks it with the same flags (tests/test_cuda.py). float32 throughout.
//
// Layout (row-major, as the checkpoint): activations x (M, dim) with M = B * T rows, row m being
// sequence b = m / T at position pos + m % T; weights (out, in); the KV cache of one layer is
// (max_batch, seq_len, kv_dim). Positions are read from device memory (pos_ptr), never from launch
// arguments, so that a captured CUDA graph can be replayed at every position.
//
// Fusion: every matrix product takes an epilogue that consumes output pairs (n, n + 1):
//   StoreEpilogue   out = W x                     (classifier)
//   AddEpilogue     out += W x                    (residual adds after wo and w2)
//   QkvEpilogue     RoPE on the (q, k) pairs, q to its buffer, k and v straight into the KV cache
//   SwigluEpilogue  the ffn input weights are stored interleaved (row 2i = w1[i], row 2i+1 = w3[i]),
//             so the pair is (w1 x, w3 x)[i] and the epilogue writes silu(a) * b
// The GEMV kernels (M <= 4) also fuse the rmsnorm in front of them.

#include "block_reduce.cuh"

// Launch shapes shared with the host (llama2py/backends/cuda.py KERNEL_CONSTANTS, passed as -D).
#ifndef GEMV_THREADS
#error "GEMV_THREADS is not defined: pass -DGEMV_THREADS=... from llama2py/backends/cuda.py KERNEL_CONSTANTS"
#endif
#ifndef GEMV_MAX_ROWS
#error "GEMV_MAX_ROWS is not defined: pass -DGEMV_MAX_ROWS=... from llama2py/backends/cuda.py KERNEL_CONSTANTS"
#endif
#ifndef GEMM_THREADS
#error "GEMM_THREADS is not defined: pass -DGEMM_THREADS=... from llama2py/backends/cuda.py KERNEL_CONSTANTS"
#endif
#ifndef ROW_THREADS
#error "ROW_THREADS is not defined: pass -DROW_THREADS=... from llama2py/backends/cuda.py KERNEL_CONSTANTS"
#endif
#ifndef ATTENTION_THREADS
#error "ATTENTION_THREADS is not defined: pass -DATTENTION_THREADS=... from llama2py/backends/cuda.py KERNEL_CONSTANTS"
#endif

#define RMS_EPS 1e-5f

// ------------------------------------------------------------------------------------------------
// epilogues: called with output row m, an even column n and the values of columns n and n + 1
// (has1 is false when n + 1 is past the last column of an odd-width output).
struct StoreEpilogue {
    float* out;
    int ldo;
    __device__ __forceinline__ void operator()(int m, int n, float v0, float v1, bool has1) const {
        float* o = out + (size_t)m * ldo + n;
        o[0] = v0;
        if (has1) o[1] = v1;
    }
};

struct AddEpilogue {
    float* out;
    int ldo;
    __device__ __forceinline__ void operator()(int m, int n, float v0, float v1, bool has1) const {
        float* o = out + (size_t)m * ldo + n;
        o[0] += v0;
        if (has1) o[1] += v1;
    }
};

struct SwigluEpilogue {
    float* out;  // (M, hidden)
    int hidden;
    __device__ __forceinline__ void operator()(int m, int n, float g, float u, bool) const {
        out[(size_t)m * hidden + (n >> 1)] = (g / (1.0f + expf(-g))) * u;
    }
};

struct QkvEpilogue {
    float* q;               // (M, dim)
    float* key_cache;       // this layer's key cache (max_batch, seq_len, kv_dim)
    float* value_cache;     // this layer's value cache
    const float* rope_cos;  // (seq_len, head_size / 2)
    const float* rope_sin;
    int pos, T, seq_len, dim, kv_dim, head_size;
    __device__ __forceinline__ void operator()(int m, int n, float a, float b, bool) const {
        const int seq = m / T, position = pos + m % T;
        if (n < dim + kv_dim) {
            const size_t rope_at = (size_t)position * (head_size >> 1) + ((n % head_size) >> 1);
            const float c = rope_cos[rope_at], s = rope_sin[rope_at];
            const float a2 = a * c - b * s, b2 = a * s + b * c;
            float* o =
                n < dim ? q + (size_t)m * dim + n : key_cache + ((size_t)seq * seq_len + position) * kv_dim + (n - dim);
            o[0] = a2;
            o[1] = b2;
        } else {
            float* o = value_cache + ((size_t)seq * seq_len + position) * kv_dim + (n - dim - kv_dim);
            o[0] = a;
            o[1] = b;
        }
    }
};

// ------------------------------------------------------------------------------------------------
// GEMV for M <= GEMV_MAX_ROWS rows: out[m, n] = W[n, :] . xn[m, :], with xn = rmsnorm(x, rms_weight) when
// use_rms, else x. The block stages xn in shared memory (M * K floats, dynamic); each warp computes
// output rows (n, n + 1) for all M inputs, grid-stride. Each lane keeps GEMV_PREFETCH 16-byte loads per
// weight row in flight (both rows of its pair: 2 * GEMV_PREFETCH), and the first chunk of the warp's first
// row pair is issued before the block stages (and normalizes) x, so that the weight latency
// overlaps the rmsnorm: enough bytes in flight to stream the weights at full bandwidth even when
// there are few blocks (N = dim). Widths K that are not a multiple of 4 take a scalar loop.
#define GEMV_PREFETCH 8

// x_shared (M, K) in shared memory <- the M rows of x, through rmsnorm(., rms_weight) when use_rms.
static __device__ __forceinline__ void gemv_stage_input(const float* __restrict__ x,
                                                        const float* __restrict__ rms_weight, int use_rms, int K, int M,
                                                        float* x_shared, float* reduce_shared) {
    const int tid = threadIdx.x;
    for (int b = 0; b < M; b++) {
        const float* x_row = x + (size_t)b * K;
        if (use_rms) {
            float sum_squares = 0.f;
            for (int k = tid; k < K; k += GEMV_THREADS) sum_squares += x_row[k] * x_row[k];
            sum_squares = block_sum(sum_squares, reduce_shared);
            const float s = sqrtf(sum_squares / (float)K + RMS_EPS);
            for (int k = tid; k < K; k += GEMV_THREADS) x_shared[(size_t)b * K + k] = rms_weight[k] * (x_row[k] / s);
        } else {
            for (int k = tid; k < K; k += GEMV_THREADS) x_shared[(size_t)b * K + k] = x_row[k];
        }
    }
    __syncthreads();
}

// The scalar path (K % 4 != 0): one 4-byte load per weight row per lane and step.
template <class Epilogue>
static __device__ __forceinline__ void gemv_scalar_body(const float* __restrict__ x,
                                                        const float* __restrict__ rms_weight, int use_rms,
                                                        const float* __restrict__ W, int N, int K, int M,
                                                        const Epilogue& epilogue) {
    extern __shared__ float4 gemv_shared[];
    float* x_shared = reinterpret_cast<float*>(gemv_shared);
    float* reduce_shared = x_shared + (size_t)M * K;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, n_warps = GEMV_THREADS / 32;

    gemv_stage_input(x, rms_weight, use_rms, K, M, x_shared, reduce_shared);

    for (int n = (blockIdx.x * n_warps + warp) * 2; n < N; n += gridDim.x * n_warps * 2) {
        const bool has1 = n + 1 < N;
        const float* w0 = W + (size_t)n * K;
        const float* w1 = has1 ? w0 + K : w0;
        float a0[GEMV_MAX_ROWS], a1[GEMV_MAX_ROWS];
#pragma unroll
        for (int b = 0; b < GEMV_MAX_ROWS; b++) a0[b] = a1[b] = 0.f;
        for (int k = lane; k < K; k += 32) {
            const float u = __ldg(w0 + k), v = __ldg(w1 + k);
#pragma unroll
            for (int b = 0; b < GEMV_MAX_ROWS; b++) {
                if (b < M) {
                    const float xv = x_shared[(size_t)b * K + k];
                    a0[b] += u * xv;
                    a1[b] += v * xv;
                }
            }
        }
#pragma unroll
        for (int b = 0; b < GEMV_MAX_ROWS; b++) {
            if (b < M) {
                const float s0 = warp_sum(a0[b]), s1 = warp_sum(a1[b]);
                if (lane == 0) epilogue(b, n, s0, s1, has1);
            }
        }
    }
}

static __device__ __forceinline__ void gemv_load_weights(const float* __restrict__ W, int n, int N, int K4, int k_block,
                                                         int lane, float4* w0_chunk, float4* w1_chunk) {
    const float4* w0 = reinterpret_cast<const float4*>(W + (size_t)n * (K4 * 4));
    const float4* w1 = n + 1 < N ? w0 + K4 : w0;
#pragma unroll
    for (int i = 0; i < GEMV_PREFETCH; i++) {
        const int k = k_block + lane + 32 * i;
        if (k < K4) {
            w0_chunk[i] = __ldg(w0 + k);
            w1_chunk[i] = __ldg(w1 + k);
        }
    }
}

template <class Epilogue>
static __device__ __forceinline__ void gemv_body(const float* __restrict__ x, const float* __restrict__ rms_weight,
                                                 int use_rms, const float* __restrict__ W, int N, int K, int M,
                                                 const Epilogue& epilogue) {
    if ((K & 3) != 0) {
        gemv_scalar_body(x, rms_weight, use_rms, W, N, K, M, epilogue);
        return;
    }
    extern __shared__ float4 gemv_shared[];
    float* x_shared = reinterpret_cast<float*>(gemv_shared);
    float* reduce_shared = x_shared + (size_t)M * K;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, n_warps = GEMV_THREADS / 32;
    const int K4 = K >> 2, stride = gridDim.x * n_warps * 2;
    int n = (blockIdx.x * n_warps + warp) * 2;
    float4 w0_chunk[GEMV_PREFETCH], w1_chunk[GEMV_PREFETCH];
    if (n < N) gemv_load_weights(W, n, N, K4, 0, lane, w0_chunk, w1_chunk);

    gemv_stage_input(x, rms_weight, use_rms, K, M, x_shared, reduce_shared);

    const float4* x_shared4 = reinterpret_cast<const float4*>(x_shared);
    bool first = true;
    for (; n < N; n += stride) {
        const bool has1 = n + 1 < N;
        float a0[GEMV_MAX_ROWS], a1[GEMV_MAX_ROWS];
#pragma unroll
        for (int b = 0; b < GEMV_MAX_ROWS; b++) a0[b] = a1[b] = 0.f;
        for (int k_block = 0; k_block < K4; k_block += 32 * GEMV_PREFETCH) {
            if (!first || k_block > 0) gemv_load_weights(W, n, N, K4, k_block, lane, w0_chunk, w1_chunk);
#pragma unroll
            for (int i = 0; i < GEMV_PREFETCH; i++) {
                const int k = k_block + lane + 32 * i;
                if (k < K4) {
#pragma unroll
                    for (int b = 0; b < GEMV_MAX_ROWS; b++) {
                        if (b < M) {
                            const float4 xv = x_shared4[(size_t)b * K4 + k];
                            a0[b] += w0_chunk[i].x * xv.x + w0_chunk[i].y * xv.y + w0_chunk[i].z * xv.z +
                                     w0_chunk[i].w * xv.w;
                            a1[b] += w1_chunk[i].x * xv.x + w1_chunk[i].y * xv.y + w1_chunk[i].z * xv.z +
                                     w1_chunk[i].w * xv.w;
                        }
                    }
                }
            }
        }
        first = false;
#pragma unroll
        for (int b = 0; b < GEMV_MAX_ROWS; b++) {
            if (b < M) {
                const float s0 = warp_sum(a0[b]), s1 = warp_sum(a1[b]);
                if (lane == 0) epilogue(b, n, s0, s1, has1);
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(GEMV_THREADS)
    gemv_store(const float* x, const float* rms_weight, int use_rms, const float* W, int N, int K, int M, float* out,
               int ldo) {
    gemv_body(x, rms_weight, use_rms, W, N, K, M, StoreEpilogue{out, ldo});
}

extern "C" __global__ void __launch_bounds__(GEMV_THREADS)
    gemv_add(const float* x, const float* rms_weight, int use_rms, const float* W, int N, int K, int M, float* out,
             int ldo) {
    gemv_body(x, rms_weight, use_rms, W, N, K, M, AddEpilogue{out, ldo});
}

extern "C" __global__ void __launch_bounds__(GEMV_THREADS)
    gemv_swiglu(const float* x, const float* rms_weight, int use_rms, const float* W, int N, int K, int M, float* out,
                int hidden) {
    gemv_body(x, rms_weight, use_rms, W, N, K, M, SwigluEpilogue{out, hidden});
}

extern "C" __global__ void __launch_bounds__(GEMV_THREADS)
    gemv_qkv(const float* x, const float* rms_weight, int use_rms, const float* W, int N, int K, int M, float* q,
             float* key_cache, float* value_cache, const float* rope_cos, const float* rope_sin, const int* pos_ptr,
             int T, int seq_len, int dim, int kv_dim, int head_size) {
    gemv_body(x, rms_weight, use_rms, W, N, K, M,
              QkvEpilogue{q, key_cache, value_cache, rope_cos, rope_sin, *pos_ptr, T, seq_len, dim, kv_dim, head_size});
}

// ------------------------------------------------------------------------------------------------
// Tiled GEMM for many rows (batches, prefill): C[m, n] = A[m, :] . W[n, :] (both K-contiguous).
// BM x BN tile per block of GEMM_THREADS (256) threads, TM x TN outputs per thread, BK = 16 deep shared tiles
// stored k-major so that the inner loop reads contiguous rows. Bounds-checked (zero-filled) loads,
// register double buffering (the next k tile's global loads are in flight while the current one is
// multiplied). The host picks the 32 x 32 tile (2 x 2 per thread) when bigger tiles would leave
// most multiprocessors idle (a batch of 256 rows times dim = 288 outputs is only 20 tiles of 64 x 64).
#define GEMM_DEPTH 16

template <int BM, int BN, int TM, int TN, class Epilogue>
static __device__ __forceinline__ void gemm_body(const float* __restrict__ A, const float* __restrict__ W, int M, int N,
                                                 int K, const Epilogue& epilogue) {
    constexpr int NT = (BM / TM) * (BN / TN);
    static_assert(NT == GEMM_THREADS, "a GEMM tile is computed by GEMM_THREADS threads");
    constexpr int LA = BM * GEMM_DEPTH / NT, LW = BN * GEMM_DEPTH / NT;
    __shared__ __align__(16) float As[GEMM_DEPTH][BM + 4];
    __shared__ __align__(16) float Ws[GEMM_DEPTH][BN + 4];
    const int tid = threadIdx.x;
    const int tx = tid % (BN / TN), ty = tid / (BN / TN);
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; i++)
#pragma unroll
        for (int j = 0; j < TN; j++) acc[i][j] = 0.f;
    float ra[LA], rw[LW];
#pragma unroll
    for (int i = 0; i < LA; i++) {
        const int e = tid + i * NT, gm = m0 + e / GEMM_DEPTH, gk = e % GEMM_DEPTH;
        ra[i] = (gm < M && gk < K) ? __ldg(A + (size_t)gm * K + gk) : 0.f;
    }
#pragma unroll
    for (int i = 0; i < LW; i++) {
        const int e = tid + i * NT, gn = n0 + e / GEMM_DEPTH, gk = e % GEMM_DEPTH;
        rw[i] = (gn < N && gk < K) ? __ldg(W + (size_t)gn * K + gk) : 0.f;
    }
    for (int k0 = 0; k0 < K; k0 += GEMM_DEPTH) {
#pragma unroll
        for (int i = 0; i < LA; i++) {
            const int e = tid + i * NT;
            As[e % GEMM_DEPTH][e / GEMM_DEPTH] = ra[i];
        }
#pragma unroll
        for (int i = 0; i < LW; i++) {
            const int e = tid + i * NT;
            Ws[e % GEMM_DEPTH][e / GEMM_DEPTH] = rw[i];
        }
        __syncthreads();
        const int k1 = k0 + GEMM_DEPTH;
        if (k1 < K) {
#pragma unroll
            for (int i = 0; i < LA; i++) {
                const int e = tid + i * NT, gm = m0 + e / GEMM_DEPTH, gk = k1 + e % GEMM_DEPTH;
                ra[i] = (gm < M && gk < K) ? __ldg(A + (size_t)gm * K + gk) : 0.f;
            }
#pragma unroll
            for (int i = 0; i < LW; i++) {
                const int e = tid + i * NT, gn = n0 + e / GEMM_DEPTH, gk = k1 + e % GEMM_DEPTH;
                rw[i] = (gn < N && gk < K) ? __ldg(W + (size_t)gn * K + gk) : 0.f;
            }
        }
#pragma unroll
        for (int kk = 0; kk < GEMM_DEPTH; kk++) {
            float a[TM], w[TN];
#pragma unroll
            for (int i = 0; i < TM; i++) a[i] = As[kk][ty * TM + i];
#pragma unroll
            for (int j = 0; j < TN; j++) w[j] = Ws[kk][tx * TN + j];
#pragma unroll
            for (int i = 0; i < TM; i++)
#pragma unroll
                for (int j = 0; j < TN; j++) acc[i][j] = fmaf(a[i], w[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < TM; i++) {
        const int m = m0 + ty * TM + i;
        if (m >= M) continue;
#pragma unroll
        for (int j = 0; j < TN; j += 2) {
            const int n = n0 + tx * TN + j;
            if (n < N) epilogue(m, n, acc[i][j], acc[i][j + 1], n + 1 < N);
        }
    }
}

#define GEMM_ENTRIES(SUF, BM, BN, TM, TN)                                                                              \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS)                                                         \
        gemm_store##SUF(const float* A, const float* W, int M, int N, int K, float* out, int ldo) {                    \
        gemm_body<BM, BN, TM, TN>(A, W, M, N, K, StoreEpilogue{out, ldo});                                             \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS)                                                         \
        gemm_add##SUF(const float* A, const float* W, int M, int N, int K, float* out, int ldo) {                      \
        gemm_body<BM, BN, TM, TN>(A, W, M, N, K, AddEpilogue{out, ldo});                                               \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS)                                                         \
        gemm_swiglu##SUF(const float* A, const float* W, int M, int N, int K, float* out, int hidden) {                \
        gemm_body<BM, BN, TM, TN>(A, W, M, N, K, SwigluEpilogue{out, hidden});                                         \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS)                                                         \
        gemm_qkv##SUF(const float* A, const float* W, int M, int N, int K, float* q, float* key_cache,                 \
                      float* value_cache, const float* rope_cos, const float* rope_sin, const int* pos_ptr, int T,     \
                      int seq_len, int dim, int kv_dim, int head_size) {                                               \
        gemm_body<BM, BN, TM, TN>(                                                                                     \
            A, W, M, N, K,                                                                                             \
            QkvEpilogue{q, key_cache, value_cache, rope_cos, rope_sin, *pos_ptr, T, seq_len, dim, kv_dim, head_size}); \
    }

GEMM_ENTRIES(_32, 32, 32, 2, 2)
GEMM_ENTRIES(_64, 64, 64, 4, 4)
GEMM_ENTRIES(_128, 128, 128, 8, 8)

// ------------------------------------------------------------------------------------------------
// The unfused pieces of the path for many rows: rmsnorm before the GEMM, and the embedding.

// out[m] = rmsnorm(x[m], w), one block per row
extern "C" __global__ void __launch_bounds__(ROW_THREADS)
    rmsnorm_rows(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ out, int K) {
    __shared__ float reduce_shared[REDUCE_SLOTS];
    const float* x_row = x + (size_t)blockIdx.x * K;
    float sum_squares = 0.f;
    for (int k = threadIdx.x; k < K; k += blockDim.x) sum_squares += x_row[k] * x_row[k];
    sum_squares = block_sum(sum_squares, reduce_shared);
    const float s = sqrtf(sum_squares / (float)K + RMS_EPS);
    float* o = out + (size_t)blockIdx.x * K;
    for (int k = threadIdx.x; k < K; k += blockDim.x) o[k] = w[k] * (x_row[k] / s);
}

// x[m] = token_embedding[tokens[m]], one block per row
extern "C" __global__ void __launch_bounds__(ROW_THREADS)
    embed(const int* __restrict__ tokens, const float* __restrict__ token_embedding, float* __restrict__ x, int dim) {
    const float* e = token_embedding + (size_t)tokens[blockIdx.x] * dim;
    float* o = x + (size_t)blockIdx.x * dim;
    for (int d = threadIdx.x; d < dim; d += blockDim.x) o[d] = e[d];
}

// ------------------------------------------------------------------------------------------------
// Attention over the KV cache, one block per (query head, row). Row m is sequence b = m / T at
// position p = pos + m % T and attends to cache positions 0..p of its kv head h / kv_mul (GQA).
// Scores: one thread per cached position (its key row read as 16-byte loads, q broadcast from
// shared memory); softmax over the block; weighted sum of values: 16-byte value loads split over
// ATTENTION_THREADS / (head_size / 4) position groups, then reduced. Needs head_size <= ATTENTION_THREADS, and
// head_size % 4 == 0 for the vector path (the scalar path covers the rest).
// Dynamic shared memory: (round4(head_size) + 4 * ATTENTION_THREADS + round4(REDUCE_SLOTS) + seq_len) floats
// (attention_shared_bytes in llama2py/backends/cuda.py).
extern "C" __global__ void __launch_bounds__(ATTENTION_THREADS)
    attention(const float* __restrict__ q, const float* __restrict__ key_cache, const float* __restrict__ value_cache,
              float* __restrict__ out, int T, const int* pos_ptr, int seq_len, int kv_mul, int head_size, int kv_dim,
              int dim) {
    extern __shared__ float4 attention_shared[];
    const int head_size4 = (head_size + 3) & ~3;
    float* q_shared = reinterpret_cast<float*>(attention_shared);  // head_size4
    float* partial = q_shared + head_size4;                        // 4 * ATTENTION_THREADS
    float* reduce_shared = partial + 4 * ATTENTION_THREADS;        // round4(REDUCE_SLOTS) = 36
    float* scores = reduce_shared + ((REDUCE_SLOTS + 3) & ~3);     // seq_len
    const int h = blockIdx.x, m = blockIdx.y, tid = threadIdx.x;
    const int b = m / T, p = *pos_ptr + m % T;
    const int kv_head = h / kv_mul;
    const bool vec = (head_size & 3) == 0;
    const float* q_head = q + (size_t)m * dim + h * head_size;
    for (int d = tid; d < head_size; d += ATTENTION_THREADS) q_shared[d] = q_head[d];
    __syncthreads();

    const float* key_base = key_cache + (size_t)b * seq_len * kv_dim + kv_head * head_size;
    const float* value_base = value_cache + (size_t)b * seq_len * kv_dim + kv_head * head_size;
    const float scale = sqrtf((float)head_size);
    for (int s = tid; s <= p; s += ATTENTION_THREADS) {
        const float* key_row = key_base + (size_t)s * kv_dim;
        float a = 0.f;
        if (vec) {
            const float4* key_row4 = reinterpret_cast<const float4*>(key_row);
            const float4* q4 = reinterpret_cast<const float4*>(q_shared);
#pragma unroll 4
            for (int d4 = 0; d4 < (head_size >> 2); d4++) {
                const float4 kv = __ldg(key_row4 + d4), qv = q4[d4];
                a += kv.x * qv.x + kv.y * qv.y + kv.z * qv.z + kv.w * qv.w;
            }
        } else {
            for (int d = 0; d < head_size; d++) a += q_shared[d] * key_row[d];
        }
        scores[s] = a / scale;
    }
    __syncthreads();
    float max_score = NEG_INF;
    for (int s = tid; s <= p; s += ATTENTION_THREADS) max_score = fmaxf(max_score, scores[s]);
    max_score = block_max(max_score, reduce_shared);
    float sum = 0.f;
    for (int s = tid; s <= p; s += ATTENTION_THREADS) {
        const float e = expf(scores[s] - max_score);
        scores[s] = e;
        sum += e;
    }
    sum = block_sum(sum, reduce_shared);  // its barriers also publish scores

    if (vec) {
        const int Q4 = head_size >> 2, G = ATTENTION_THREADS / Q4, g = tid / Q4, d4 = tid % Q4;
        float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
        if (g < G) {
#pragma unroll 4
            for (int s = g; s <= p; s += G) {
                const float a = scores[s];
                const float4 v = __ldg(reinterpret_cast<const float4*>(value_base + (size_t)s * kv_dim) + d4);
                acc.x += a * v.x;
                acc.y += a * v.y;
                acc.z += a * v.z;
                acc.w += a * v.w;
            }
        }
        reinterpret_cast<float4*>(partial)[tid] = acc;
        __syncthreads();
        if (tid < head_size) {
            float t = 0.f;
            for (int gg = 0; gg < G; gg++) t += partial[gg * head_size + tid];
            out[(size_t)m * dim + h * head_size + tid] = t / sum;
        }
    } else {
        const int G = ATTENTION_THREADS / head_size, g = tid / head_size, d = tid % head_size;
        float acc = 0.f;
        if (g < G)
            for (int s = g; s <= p; s += G) acc += scores[s] * value_base[(size_t)s * kv_dim + d];
        partial[tid] = acc;
        __syncthreads();
        if (tid < head_size) {
            float t = 0.f;
            for (int gg = 0; gg < G; gg++) t += partial[gg * head_size + tid];
            out[(size_t)m * dim + h * head_size + tid] = t / sum;
        }
    }
}
