// CPU kernels: see kernels.h for the conventions (orphaned work-sharing, fixed accumulation order).
#include "kernels.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define L2P_AVX2 1
#endif

namespace l2p {

// ---- an 8-lane float vector: AVX2+FMA when compiled for it, plain C++ otherwise ----------------
// Both variants accumulate in the same structure (8 lanes, fixed reduction), so results only
// differ between builds by FMA rounding, never between GEMV and GEMM of one build.
#ifdef L2P_AVX2
using V8 = __m256;
static inline V8 v_zero() {
    return _mm256_setzero_ps();
}
static inline V8 v_load(const float* p) {
    return _mm256_loadu_ps(p);
}
static inline __m256i v_mask(int n) {  // lanes 0..n-1 on, n in 1..7
    static const int32_t m[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m + 8 - n));
}
static inline V8 v_load_n(const float* p, __m256i mask) {
    return _mm256_maskload_ps(p, mask);
}
static inline V8 v_fma(V8 a, V8 b, V8 c) {
    return _mm256_fmadd_ps(a, b, c);
}
static inline float v_sum(V8 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));  // (0+4, 1+5, 2+6, 3+7)
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));                                         // (04+26, 15+37)
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}
// v_sum of several accumulators at once, bitwise equal to v_sum of each: every output gets the same
// adds on the same operands ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)), only gathered by shuffles.
// fold(a, b): [a0+a4 .. a3+a7 | b0+b4 .. b3+b7]
static inline __m256 v_fold(V8 a, V8 b) {
    return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}
// pair(p, q): per 128-bit lane [p.s0+p.s2, p.s1+p.s3, q.s0+q.s2, q.s1+q.s3]
static inline __m256 v_pair(__m256 p, __m256 q) {
    return _mm256_add_ps(_mm256_shuffle_ps(p, q, 0x44), _mm256_shuffle_ps(p, q, 0xEE));
}
static inline __m128 v_sum4(V8 a0, V8 a1, V8 a2, V8 a3) {
    const __m256 x = v_pair(v_fold(a0, a2), v_fold(a1, a3));  // [t0 t1 of a0, a1 | of a2, a3]
    const __m128 lo = _mm256_castps256_ps128(x), hi = _mm256_extractf128_ps(x, 1);
    return _mm_add_ps(_mm_shuffle_ps(lo, hi, 0x88), _mm_shuffle_ps(lo, hi, 0xDD));
}
static inline __m256 v_sum8(const V8* a) {
    const __m256 x = v_pair(v_fold(a[0], a[4]), v_fold(a[1], a[5]));  // a0, a1 | a4, a5
    const __m256 y = v_pair(v_fold(a[2], a[6]), v_fold(a[3], a[7]));  // a2, a3 | a6, a7
    return _mm256_add_ps(_mm256_shuffle_ps(x, y, 0x88), _mm256_shuffle_ps(x, y, 0xDD));
}
using Mask = __m256i;
#else
struct V8 {
    float v[8];
};
static inline V8 v_zero() {
    V8 r;
    for (int i = 0; i < 8; ++i) r.v[i] = 0.f;
    return r;
}
static inline V8 v_load(const float* p) {
    V8 r;
    std::memcpy(r.v, p, sizeof r.v);
    return r;
}
using Mask = int;
static inline Mask v_mask(int n) {
    return n;
}
static inline V8 v_load_n(const float* p, Mask n) {
    V8 r = v_zero();
    for (int i = 0; i < n; ++i) r.v[i] = p[i];
    return r;
}
static inline V8 v_fma(V8 a, V8 b, V8 c) {
    for (int i = 0; i < 8; ++i) c.v[i] += a.v[i] * b.v[i];
    return c;
}
static inline float v_sum(V8 v) {
    float s0 = v.v[0] + v.v[4], s1 = v.v[1] + v.v[5], s2 = v.v[2] + v.v[6], s3 = v.v[3] + v.v[7];
    float t0 = s0 + s2, t1 = s1 + s3;
    return t0 + t1;
}
#endif

static inline float dot(const float* a, const float* b, int n) {
    V8 acc = v_zero();
    int k = 0;
    for (; k + 8 <= n; k += 8) acc = v_fma(v_load(a + k), v_load(b + k), acc);
    if (k < n) {
        Mask m = v_mask(n - k);
        acc = v_fma(v_load_n(a + k, m), v_load_n(b + k, m), acc);
    }
    return v_sum(acc);
}

// R weight rows x C activation rows, each output one 8-lane accumulator (the fixed order above).
// y[c * ldy + r] = dot(w + r * n, x + c * ldx)
template <int R, int C>
static inline void tile(const float* w, const float* x, long ldx, float* y, long ldy, int n) {
    V8 acc[R][C];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) acc[r][c] = v_zero();
    int k = 0;
    for (; k + 8 <= n; k += 8) {
        V8 xv[C];
        for (int c = 0; c < C; ++c) {
            xv[c] = v_load(x + c * ldx + k);
#ifdef L2P_AVX2
            // keep each loaded vector in a register: otherwise GCC folds a reload into every FMA
            // (R*C + R loads per step instead of R + C: load-bound on Zen 3)
            if (R > 1) asm("" : "+x"(xv[c]));
#endif
        }
        for (int r = 0; r < R; ++r) {
            V8 wv = v_load(w + (long)r * n + k);
#ifdef L2P_AVX2
            if (C > 1) asm("" : "+x"(wv));
#endif
            for (int c = 0; c < C; ++c) acc[r][c] = v_fma(wv, xv[c], acc[r][c]);
        }
    }
    if (k < n) {
        Mask m = v_mask(n - k);
        V8 xv[C];
        for (int c = 0; c < C; ++c) xv[c] = v_load_n(x + c * ldx + k, m);
        for (int r = 0; r < R; ++r) {
            V8 wv = v_load_n(w + (long)r * n + k, m);
            for (int c = 0; c < C; ++c) acc[r][c] = v_fma(wv, xv[c], acc[r][c]);
        }
    }
#ifdef L2P_AVX2
    // reduce and store 8 or 4 contiguous outputs at a time (same bits as v_sum each)
    for (int c = 0; c < C; ++c) {
        int r = 0;
        if (R >= 8) {
            V8 col[8];
            for (int i = 0; i < 8; ++i) col[i] = acc[i][c];
            _mm256_storeu_ps(y + c * ldy, v_sum8(col));
            r = 8;
        }
        for (; r + 4 <= R; r += 4)
            _mm_storeu_ps(y + c * ldy + r, v_sum4(acc[r][c], acc[r + 1][c], acc[r + 2][c], acc[r + 3][c]));
        for (; r < R; ++r) y[c * ldy + r] = v_sum(acc[r][c]);
    }
#else
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) y[c * ldy + r] = v_sum(acc[r][c]);
#endif
}

// Dispatch a runtime tile size to the templates.
template <int C>
static inline void tile_r(int R, const float* w, const float* x, long ldx, float* y, long ldy, int n) {
    switch (R) {
        case 8:
            tile<8, C>(w, x, ldx, y, ldy, n);
            break;
        case 7:
            tile<7, C>(w, x, ldx, y, ldy, n);
            break;
        case 6:
            tile<6, C>(w, x, ldx, y, ldy, n);
            break;
        case 5:
            tile<5, C>(w, x, ldx, y, ldy, n);
            break;
        case 4:
            tile<4, C>(w, x, ldx, y, ldy, n);
            break;
        case 3:
            tile<3, C>(w, x, ldx, y, ldy, n);
            break;
        case 2:
            tile<2, C>(w, x, ldx, y, ldy, n);
            break;
        case 1:
            tile<1, C>(w, x, ldx, y, ldy, n);
            break;
        default:
            break;
    }
}

static constexpr int ROW_BLOCK = 8;  // weight rows per work item: 8 GEMV chains, fits L1 for GEMM

// One block of <= 8 weight rows against all activation rows.
static constexpr long PREFETCH_AHEAD = 16384;  // bytes ahead of the row being read (streaming GEMV)

static inline void block(const float* w, int nr, const float* x, long ldx, int rows, float* y, long ldy, int n,
                         bool stream, const char* pf = nullptr, long pf_bytes = 0) {
    if (rows == 1 && !stream) {  // GEMV, weights in cache: 8 rows at once, 8 independent FMA chains
        tile_r<1>(nr, w, x, ldx, y, ldy, n);
        return;
    }
    if (rows == 1) {
        // GEMV, weights streamed from DRAM: one row at a time is a single sequential stream, and a
        // software prefetch 16 KiB ahead keeps enough misses in flight (measured: ~1.3x over 8
        // interleaved rows without it on a 2-core EPYC VM). Same per-output sums as above.
        for (int r = 0; r < nr; ++r) {
            const float* wr = w + (long)r * n;
#ifdef L2P_AVX2
            const char* p = (const char*)wr + PREFETCH_AHEAD;
            for (long b = 0; b < (long)n * 4; b += 64) _mm_prefetch(p + b, _MM_HINT_T0);
#endif
            tile<1, 1>(wr, x, ldx, y + r, ldy, n);
        }
        return;
    }
    // GEMM: the block's rows stay in L1 while every activation row passes; 4x3 register tiles.
    // pf: the next block to read (streaming GEMM), prefetched a share per activation triple so
    // the misses spread over the block's compute instead of queueing up at its start.
    const long pf_step = pf_bytes ? ((pf_bytes / ((rows + 2) / 3) + 63) & ~63L) : 0;
    long pf_done = 0;
    int c = 0;
    for (; c + 3 <= rows; c += 3) {
#ifdef L2P_AVX2
        for (long e = std::min(pf_bytes, pf_done + pf_step); pf_done < e; pf_done += 64)
            _mm_prefetch(pf + pf_done, _MM_HINT_T0);
#endif
        for (int r = 0; r < nr; r += 4)
            tile_r<3>(std::min(4, nr - r), w + (long)r * n, x + c * ldx, ldx, y + c * ldy + r, ldy, n);
    }
    const int left = rows - c;
    for (int r = 0; r < nr && left; r += 4) {
        if (left == 2)
            tile_r<2>(std::min(4, nr - r), w + (long)r * n, x + c * ldx, ldx, y + c * ldy + r, ldy, n);
        else
            tile_r<1>(std::min(4, nr - r), w + (long)r * n, x + c * ldx, ldx, y + c * ldy + r, ldy, n);
    }
}

void matmul_jobs(const MatJob* jobs, int njobs, const float* x, long ldx, int rows, int n, bool stream) {
    // GEMM: decode batches (<= 64 rows) take blocks of 4 weight rows (one register tile): the
    // activations stay cached and the small block streams in behind its prefetch (measured at
    // batch 32, 2 threads: 4 rows 13.3 ms/step, 8 rows 14.0, 16 rows 14.9); longer prefill chunks
    // keep blocks of 16 (whole 64-byte lines of each output row, fewer passes over x).
    const int rb = rows == 1 ? ROW_BLOCK : rows <= 64 ? 4 : 2 * ROW_BLOCK;
    int start[8];
    int total = 0;
    for (int j = 0; j < njobs; ++j) {
        start[j] = total;
        total += (jobs[j].d + rb - 1) / rb;
    }
#pragma omp for schedule(static)
    for (int b = 0; b < total; ++b) {
        int j = njobs - 1;
        while (start[j] > b) --j;
        const MatJob& job = jobs[j];
        const int r0 = (b - start[j]) * rb;
        const int nr = std::min(rb, job.d - r0);
        const char* pf = nullptr;
        const char* pfg = nullptr;
        long pf_bytes = 0;
        if (stream && rows > 1 && r0 + rb < job.d) {  // GEMM from DRAM: fetch a later block meanwhile
            const long off = (long)(r0 + rb) * n;
            pf = (const char*)(job.w + off);
            if (job.w_gate) pfg = (const char*)(job.w_gate + off);
            pf_bytes = (long)std::min(rb, job.d - r0 - rb) * n * 4;
        }
        block(job.w + (long)r0 * n, nr, x, ldx, rows, job.out + r0, job.ldo, n, stream, pf, pf_bytes);
        if (job.w_gate)
            block(job.w_gate + (long)r0 * n, nr, x, ldx, rows, job.out_gate + r0, job.ldo, n, stream, pfg,
                  pfg ? pf_bytes : 0);
        if (job.epi) job.epi->run(r0, nr);
    }
}

void matmul(float* out, long ldo, const float* x, long ldx, int rows, const float* w, int d, int n, bool stream) {
    MatJob job{w, d, out, ldo};
    matmul_jobs(&job, 1, x, ldx, rows, n, stream);
}

// ---- per-row kernels ---------------------------------------------------------------------------------
void rmsnorm_row(float* o, const float* xr, const float* w, int n) {
    float ss = dot(xr, xr, n);
    ss = ss / n + 1e-5f;
    const float s = 1.0f / std::sqrt(ss);
    for (int i = 0; i < n; ++i) o[i] = w[i] * (s * xr[i]);
}

void rmsnorm(float* out, const float* x, const float* w, int rows, int n) {
#pragma omp for schedule(static)
    for (int r = 0; r < rows; ++r) rmsnorm_row(out + (long)r * n, x + (long)r * n, w, n);
}

void rope(float* x, int rows, int n_heads, int head_size, const int* positions, const float* cos_sin) {
    const int dim = n_heads * head_size;
#pragma omp for schedule(static)
    for (int r = 0; r < rows; ++r)
        rope_span(x + (long)r * dim, 0, dim, head_size, cos_sin + (long)positions[r] * head_size);
}

void rope_table(float* out, int seq_len, int head_size) {
    const int half = head_size / 2;
    for (int p = 0; p < seq_len; ++p)
        for (int i = 0; i < half; ++i) {
            const float freq = 1.0f / powf(10000.0f, (float)(2 * i) / (float)head_size);
            const float val = (float)p * freq;
            out[((long)p * half + i) * 2] = cosf(val);
            out[((long)p * half + i) * 2 + 1] = sinf(val);
        }
}

void swiglu(float* h, const float* g, int rows, int n) {
    const long total = (long)rows * n;
#pragma omp for schedule(static)
    for (long i = 0; i < total; ++i) h[i] = silu_mul(h[i], g[i]);
}

void residual(float* x, const float* y, int rows, int n) {
    const long total = (long)rows * n;
#pragma omp for schedule(static)
    for (long i = 0; i < total; ++i) x[i] += y[i];
}

// ---- exp for softmax: a[i] = exp(a[i] - mx) ------------------------------------------------------
// Cephes' expf (range reduction by ln 2 in two parts, degree-6 polynomial, scale by 2^n), within
// 2 ulp of libm's expf, but 8 lanes at a time: libm's scalar expf was most of a sampled step's
// softmax over 32000 logits. Vector and scalar tail do the same operations (FMA included), so a
// value's result does not depend on its place in the row. Inputs below -87.3 (exp < 1.2e-38)
// are clamped there: a probability that small never changes a sampling decision. NaN stays NaN on
// both paths (as expf does): the scalar path returns it before any float-to-int conversion (which
// would be undefined), the vector clamps take x as their second operand, which they return for NaN.
#ifdef L2P_AVX2
static inline float exp_scalar(float x) {
    if (std::isnan(x)) return x;
    x = std::min(std::max(x, -87.3f), 88.3f);
    const float fx = std::floor(std::fma(x, 1.44269504088896341f, 0.5f));
    x = std::fma(-fx, 0.693359375f, x);
    x = std::fma(-fx, -2.12194440e-4f, x);
    const float z = x * x;
    float y = 1.9875691500e-4f;
    y = std::fma(y, x, 1.3981999507e-3f);
    y = std::fma(y, x, 8.3334519073e-3f);
    y = std::fma(y, x, 4.1665795894e-2f);
    y = std::fma(y, x, 1.6666665459e-1f);
    y = std::fma(y, x, 5.0000001201e-1f);
    y = std::fma(y, z, x) + 1.0f;
    int32_t bits = ((int32_t)fx + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, 4);
    return y * scale;
}

static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_set1_ps(88.3f), _mm256_max_ps(_mm256_set1_ps(-87.3f), x));  // NaN passes through
    const __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    const __m256 z = _mm256_mul_ps(x, x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_add_ps(_mm256_fmadd_ps(y, z, x), _mm256_set1_ps(1.0f));
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(bits));
}

static void exp_sub(float* a, int n, float mx) {
    const __m256 m = _mm256_set1_ps(mx);
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(a + i, exp8(_mm256_sub_ps(_mm256_loadu_ps(a + i), m)));
    for (; i < n; ++i) a[i] = exp_scalar(a[i] - mx);
}
#else
static void exp_sub(float* a, int n, float mx) {
    for (int i = 0; i < n; ++i) a[i] = expf(a[i] - mx);
}
#endif

// ---- attention ---------------------------------------------------------------------------------------
// Heads [h0, h1) of one row at position pos, over one slot's cache (kc, vc: (seq_len, kv_dim)).
// Positions run in the outer loop and heads in the inner one, so each position's K and V rows are
// read whole and in address order (one sequential stream per slot for the hardware prefetcher).
// Every output element gets the same operations in the same order as one head at a time: scores
// by dot(), max, exp and sum over t in order, then o[i] += (att[t] * inv) * v[i] over t in order.
static void attend(float* out, const float* q, const float* kc, const float* vc, int pos, int h0, int h1, int head_size,
                   int kv_dim, int kv_mul, int seq_len, float* att) {
    const float scale = 1.0f / std::sqrt((float)head_size);
    const int nh = h1 - h0;
    const long lo = (long)(h0 / kv_mul) * head_size, hi = (long)((h1 - 1) / kv_mul + 1) * head_size;
    for (int t = 0; t <= pos; ++t) {
        const float* k = kc + (long)t * kv_dim;
#ifdef L2P_AVX2
        for (long i = lo; i < hi; i += 16) {
            _mm_prefetch((const char*)(k + 8L * kv_dim + i), _MM_HINT_T0);
            _mm_prefetch((const char*)(vc + (long)t * kv_dim + i), _MM_HINT_T0);
        }
#endif
        for (int h = h0; h < h1; ++h)
            att[(long)(h - h0) * seq_len + t] =
                dot(q + (long)h * head_size, k + (long)(h / kv_mul) * head_size, head_size) * scale;
    }
    float inv[64];
    for (int j = 0; j < nh; ++j) {
        float* a = att + (long)j * seq_len;
        float mx = -INFINITY;
        for (int t = 0; t <= pos; ++t) mx = std::max(mx, a[t]);
        float sum = 0.f;
        exp_sub(a, pos + 1, mx);
        for (int t = 0; t <= pos; ++t) sum += a[t];  // sequential, as run
        inv[j] = 1.0f / sum;
    }
    float* o = out + (long)h0 * head_size;
    for (int i = 0; i < nh * head_size; ++i) o[i] = 0.f;
    for (int t = 0; t <= pos; ++t) {
        const float* v = vc + (long)t * kv_dim;
        for (int h = h0; h < h1; ++h) {
            const float a = att[(long)(h - h0) * seq_len + t] * inv[h - h0];
            const float* vh = v + (long)(h / kv_mul) * head_size;
            float* oh = out + (long)h * head_size;
            for (int i = 0; i < head_size; ++i) oh[i] += a * vh[i];
        }
    }
}

void attention(float* out, const float* q, const float* k_cache, const float* v_cache, const int* seq,
               const int* positions, int rows, int n_heads, int n_kv_heads, int head_size, int seq_len,
               float* scratch) {
    const int dim = n_heads * head_size;
    const int kv_dim = n_kv_heads * head_size;
    const int kv_mul = n_heads / n_kv_heads;
    float* att = scratch + (long)omp_get_thread_num() * n_heads * seq_len;
    // Enough rows for every thread: one row (all heads, whole K/V rows) per work item; else one
    // (row, group of heads) per item. Same arithmetic per element either way. Groups of at most 64.
    const int per = rows >= 4 * omp_get_num_threads() && n_heads <= 64 ? n_heads : 1;
    const int groups = n_heads / per;
    const int work = rows * groups;
#pragma omp for schedule(static)
    for (int it = 0; it < work; ++it) {
        const int r = it / groups, h0 = (it % groups) * per;
        const long slot = (long)seq[r] * seq_len * kv_dim;
        attend(out + (long)r * dim, q + (long)r * dim, k_cache + slot, v_cache + slot, positions[r], h0, h0 + per,
               head_size, kv_dim, kv_mul, seq_len, att);
    }
}

// ---- sampling ----------------------------------------------------------------------------------------
uint32_t rng_u32(uint64_t* state) {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (uint32_t)((*state * 0x2545F4914F6CDD1DULL) >> 32);
}

float rng_coin(uint64_t* state) {
    return (float)(rng_u32(state) >> 8) / 16777216.0f;
}

int argmax(const float* x, int n) {
    int best = 0;
    float mx = x[0];
    for (int i = 1; i < n; ++i)
        if (x[i] > mx) {
            mx = x[i];
            best = i;
        }
    return best;
}

void softmax(float* probs, const float* x, int n) {
    float mx = x[0];
    for (int i = 1; i < n; ++i) mx = std::max(mx, x[i]);
    float sum = 0.f;
    if (probs != x) std::memcpy(probs, x, sizeof(float) * n);
    exp_sub(probs, n, mx);
    for (int i = 0; i < n; ++i) sum += probs[i];  // sequential float32, as run
    for (int i = 0; i < n; ++i) probs[i] /= sum;
}

int sample_mult(const float* probs, int n, float coin) {
    float cdf = 0.f;
    for (int i = 0; i < n; ++i) {
        cdf += probs[i];
        if (coin < cdf) return i;
    }
    return n - 1;
}

int sample_topp(const float* probs, int n, float top_p, float coin, int* idx, float* cand) {
    const float cutoff = (1.0f - top_p) / (float)(n - 1);
    int m = 0;
    for (int i = 0; i < n; ++i)
        if (probs[i] >= cutoff) idx[m++] = i;
    if (m == 0) return argmax(probs, n);  // only possible for top_p < 1/n; keep it defined
    // descending probability, ties in index order
    if (m <= 256) {
        std::sort(idx, idx + m,
                  [probs](int a, int b) { return probs[a] > probs[b] || (probs[a] == probs[b] && a < b); });
    } else {
        // Many candidates (flat distributions): the same order by a stable LSD radix sort of the
        // probabilities' bits (non-negative floats order like their bit patterns; complemented for
        // descending order; stability keeps ties in index order). idx arrives in index order.
        // cand (n floats) doubles as the second buffer of ids: the sort is done before cand is used.
        static_assert(sizeof(float) == sizeof(int), "cand doubles as an int buffer");
        int* buf = reinterpret_cast<int*>(cand);
        int* src = idx;
        int* dst = buf;
        for (int shift = 0; shift < 32; shift += 8) {
            int count[257] = {0};
            for (int i = 0; i < m; ++i) {
                uint32_t key;
                std::memcpy(&key, probs + src[i], 4);
                ++count[((~key) >> shift & 0xff) + 1];
            }
            for (int b = 0; b < 256; ++b) count[b + 1] += count[b];
            for (int i = 0; i < m; ++i) {
                uint32_t key;
                std::memcpy(&key, probs + src[i], 4);
                dst[count[(~key) >> shift & 0xff]++] = src[i];
            }
            std::swap(src, dst);
        }
        // 4 passes: the sorted ids are back in idx
    }
    float cum = 0.f;
    int last = m - 1;
    for (int i = 0; i < m; ++i) {
        cum += probs[idx[i]];
        cand[i] = cum;
        if (cum > top_p) {
            last = i;
            break;
        }
    }
    const float r = coin * cand[last];
    for (int i = 0; i <= last; ++i)
        if (r < cand[i]) return idx[i];
    return idx[last];
}

int sample(const float* logits, int n, double temperature, double top_p, uint64_t* state, float* probs, int* idx,
           float* cand) {
    if (temperature == 0.0) return argmax(logits, n);
    const float t = (float)temperature;
    for (int i = 0; i < n; ++i) probs[i] = logits[i] / t;
    softmax(probs, probs, n);
    const float coin = rng_coin(state);
    if (top_p <= 0.0 || top_p >= 1.0) return sample_mult(probs, n, coin);
    return sample_topp(probs, n, (float)top_p, coin, idx, cand);
}

double log_softmax_at(const float* x, int n, int token) {
    double mx = x[0];
    for (int i = 1; i < n; ++i) mx = std::max(mx, (double)x[i]);
    double s = 0.0;
    for (int i = 0; i < n; ++i) s += std::exp((double)x[i] - mx);
    return (double)x[token] - mx - std::log(s);
}

}  // namespace l2p
