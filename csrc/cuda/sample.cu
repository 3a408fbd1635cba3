// llama2py CUDA kernels: the run-compatible sampler (docs/FORMAT.md, "Sampler").
//
// One block of SNT threads per batch row. Greedy = argmax (first index on ties). Otherwise
// softmax(logits / temperature), one coin per token from the row's xorshift64* state (kept on the
// device, uint64 per slot), then either the plain inverse-CDF walk in index order (top_p <= 0 or
// >= 1) or nucleus sampling: candidates p >= (1 - top_p) / (V - 1), in descending probability
// (ties in index order), cut after the first one at which the running sum exceeds top_p, and the
// walk with r = coin * (mass kept).
//
// The nucleus is found without sorting: with every probability >= 0, the float bit patterns are
// ordered like the values, so a binary search over 31 bits on mass(u) = sum of candidates whose
// bits >= u finds the probability at which the descending running sum crosses a target; ties are
// then resolved in index order by a block-wide count scan. Sums are deterministic block
// reductions (the same input gives the same token on every run); they round differently from the
// CPU's sequential float32 sums only in the last bits.
//
// Forced tokens (prompt positions) bypass sampling and do not advance the generator. With
// iparams[0] set, out_lp gets log softmax(raw logits)[token]. With advance_pos, block 0 increments
// *pos_ptr at the end (the captured decode graph advances its own position).

#define SNT 1024
#define WARP_FULL 0xffffffffu
#define NEG_INF __int_as_float(0xff800000)
#define POS_INF __int_as_float(0x7f800000)
#define BIG_INT 0x7fffffff

// Block-wide reduction (SNT / 32 == 32 warps): a fixed butterfly inside each warp, then the same
// over the warps' results, so the same inputs always give the same bits. sh needs 33 slots.
template <class T, class Op>
static __device__ T s_block_reduce(T v, T* sh, Op op) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(WARP_FULL, v, o));
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    if (w == 0) {
        T t = sh[lane];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) t = op(t, __shfl_xor_sync(WARP_FULL, t, o));
        if (lane == 0) sh[32] = t;
    }
    __syncthreads();
    return sh[32];
}

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

static __device__ float s_block_sum(float v, float* sh) {
    return s_block_reduce(v, sh, OpAdd{});
}
static __device__ int s_block_sum_int(int v, int* sh) {
    return s_block_reduce(v, sh, OpAdd{});
}
static __device__ float s_block_max(float v, float* sh) {
    return s_block_reduce(v, sh, OpMaxF{});
}
static __device__ float s_block_min(float v, float* sh) {
    return -s_block_max(-v, sh);
}
static __device__ int s_block_min_int(int v, int* sh) {
    return s_block_reduce(v, sh, OpMinI{});
}

// Exclusive prefix over threads in thread order (thread t owns the t-th contiguous chunk).
template <class V>
static __device__ V s_block_excl_scan(V v, V* sh) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    V inc = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const V t = __shfl_up_sync(WARP_FULL, inc, o);
        if (lane >= o) inc += t;
    }
    V excl = __shfl_up_sync(WARP_FULL, inc, 1);
    if (lane == 0) excl = V(0);
    __syncthreads();
    if (lane == 31) sh[w] = inc;
    __syncthreads();
    if (w == 0) {
        const V t = sh[lane];
        V ti = t;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const V u = __shfl_up_sync(WARP_FULL, ti, o);
            if (lane >= o) ti += u;
        }
        V te = __shfl_up_sync(WARP_FULL, ti, 1);
        if (lane == 0) te = V(0);
        sh[lane] = te;  // exclusive offset of warp `lane`
    }
    __syncthreads();
    const V r = sh[w] + excl;
    __syncthreads();
    return r;
}

// run's xorshift64*: state ^= state >> 12; ^= << 25; ^= >> 27; (state * 0x2545F4914F6CDD1D) >> 32
static __device__ __forceinline__ float next_coin(unsigned long long* st) {
    unsigned long long s = *st;
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    *st = s;
    const unsigned int u = (unsigned int)((s * 0x2545F4914F6CDD1DULL) >> 32);
    return (float)(u >> 8) / 16777216.0f;
}

static __device__ int block_argmax(const float* __restrict__ row, int V, float* shf, int* shi) {
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    float best = NEG_INF;
    int bi = BIG_INT;
    for (int i = tid; i < V; i += SNT) {
        const float v = row[i];
        if (v > best) {
            best = v;
            bi = i;
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(WARP_FULL, best, o);
        const int oi = __shfl_xor_sync(WARP_FULL, bi, o);
        if (ov > best || (ov == best && oi < bi)) {
            best = ov;
            bi = oi;
        }
    }
    __syncthreads();
    if (lane == 0) {
        shf[w] = best;
        shi[w] = bi;
    }
    __syncthreads();
    if (w == 0) {
        best = shf[lane];
        bi = shi[lane];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(WARP_FULL, best, o);
            const int oi = __shfl_xor_sync(WARP_FULL, bi, o);
            if (ov > best || (ov == best && oi < bi)) {
                best = ov;
                bi = oi;
            }
        }
        if (lane == 0) shi[32] = bi;
    }
    __syncthreads();
    const int r = shi[32];
    return r == BIG_INT ? 0 : r;  // all NaN: token 0
}

// Sum of candidate probabilities (>= cutoff) in this thread's chunk whose bit pattern is >= u.
static __device__ __forceinline__ float chunk_mass(const float* p, int lo, int hi, float cutoff, unsigned int u) {
    float a = 0.f;
    for (int i = lo; i < hi; i++) {
        const float v = p[i];
        if (v >= cutoff && (unsigned int)__float_as_int(v) >= u) a += v;
    }
    return a;
}

static __device__ __forceinline__ int chunk_count_eq(const float* p, int lo, int hi, float cutoff, unsigned int u) {
    int c = 0;
    for (int i = lo; i < hi; i++) {
        const float v = p[i];
        c += (v >= cutoff && (unsigned int)__float_as_int(v) == u) ? 1 : 0;
    }
    return c;
}

// A thread's contiguous chunk [lo, hi) of the probabilities (thread t owns the t-th chunk, so
// chunks are in index order). MemChunk reads it from global memory on every pass; RegChunk holds it
// in registers (V <= RC * SNT, e.g. 32768 with 1024 threads): the nucleus search makes ~70 passes
// over the chunk, and registers spare each pass the global reads. Both add in the same order, so
// they give the same bits.
struct MemChunk {
    const float* p;
    int lo, hi;
    __device__ __forceinline__ float mass(float cutoff, unsigned int u) const {
        return chunk_mass(p, lo, hi, cutoff, u);
    }
    __device__ __forceinline__ int count_eq(float cutoff, unsigned int u) const {
        return chunk_count_eq(p, lo, hi, cutoff, u);
    }
    __device__ __forceinline__ float min_cand(float cutoff) const {
        float mn = POS_INF;
        for (int i = lo; i < hi; i++)
            if (p[i] >= cutoff) mn = fminf(mn, p[i]);
        return mn;
    }
    // offset in the chunk of its k-th (k >= 1) candidate with bits u, or -1
    __device__ __forceinline__ int find(float cutoff, unsigned int u, int k) const {
        int j = 0;
        for (int i = lo; i < hi; i++) {
            const float v = p[i];
            if (v >= cutoff && (unsigned int)__float_as_int(v) == u && ++j == k) return i - lo;
        }
        return -1;
    }
};

#define RC 32
struct RegChunk {
    float v[RC];  // (RC,) this thread's probabilities; v[j] for j >= n is never read
    int n;
    __device__ __forceinline__ float mass(float cutoff, unsigned int u) const {
        float a = 0.f;
#pragma unroll
        for (int j = 0; j < RC; j++)
            if (j < n && v[j] >= cutoff && (unsigned int)__float_as_int(v[j]) >= u) a += v[j];
        return a;
    }
    __device__ __forceinline__ int count_eq(float cutoff, unsigned int u) const {
        int c = 0;
#pragma unroll
        for (int j = 0; j < RC; j++) c += (j < n && v[j] >= cutoff && (unsigned int)__float_as_int(v[j]) == u) ? 1 : 0;
        return c;
    }
    __device__ __forceinline__ float min_cand(float cutoff) const {
        float mn = POS_INF;
#pragma unroll
        for (int j = 0; j < RC; j++)
            if (j < n && v[j] >= cutoff) mn = fminf(mn, v[j]);
        return mn;
    }
    __device__ __forceinline__ int find(float cutoff, unsigned int u, int k) const {
        int c = 0, at = -1;
#pragma unroll
        for (int j = 0; j < RC; j++) {
            const bool hit = j < n && v[j] >= cutoff && (unsigned int)__float_as_int(v[j]) == u;
            c += hit ? 1 : 0;
            if (hit && c == k && at < 0) at = j;
        }
        return at;
    }
};

// Largest u with mass(u) > target, searched bit by bit (mass is nonincreasing in u); 0 if none.
template <class Ch>
static __device__ unsigned int search_mass(const Ch& ch, float cutoff, float target, float* shf) {
    unsigned int u = 0;
    for (int bit = 30; bit >= 0; bit--) {
        const unsigned int c = u | (1u << bit);
        if (s_block_sum(ch.mass(cutoff, c), shf) > target) u = c;
    }
    return u;
}

// Within the tie group of value bits u (cnt members, mass G strictly above it), the smallest
// k >= 1 with G + k * v > target (cnt if rounding never gets there); *run gets that sum.
static __device__ __forceinline__ int tie_rank(float G, unsigned int u, int cnt, float target, float* run) {
    const float v = __int_as_float((int)u);
    float r = G;
    int k = 1;
    for (; k <= cnt; k++) {
        r += v;
        if (r > target) break;
    }
    if (k > cnt) k = cnt;
    *run = r;
    return k;
}

// Nucleus (top-p) sampling over the block's chunks; every thread returns the same token.
template <class Ch>
static __device__ int nucleus(const Ch& ch, int lo, int V, float top_p, float coin, float* shf, int* shi) {
    const float cutoff = (1.0f - top_p) / (float)(V - 1);
    const float total = s_block_sum(ch.mass(cutoff, 0u), shf);
    unsigned int u_last;
    int k_last;
    float cum_last;
    if (!(total > top_p)) {
        // no cut: the nucleus is every candidate; its last is the smallest (last index)
        const float mn = s_block_min(ch.min_cand(cutoff), shf);
        u_last = (unsigned int)__float_as_int(mn);
        k_last = s_block_sum_int(ch.count_eq(cutoff, u_last), shi);
        cum_last = total;
    } else {
        u_last = search_mass(ch, cutoff, top_p, shf);
        const float G = s_block_sum(ch.mass(cutoff, u_last + 1u), shf);
        const int cnt = s_block_sum_int(ch.count_eq(cutoff, u_last), shi);
        k_last = tie_rank(G, u_last, cnt, top_p, &cum_last);
    }
    const float r = coin * cum_last;
    unsigned int u2 = search_mass(ch, cutoff, r, shf);
    const float G2 = s_block_sum(ch.mass(cutoff, u2 + 1u), shf);
    const int cnt2 = s_block_sum_int(ch.count_eq(cutoff, u2), shi);
    float run2;
    int k2 = tie_rank(G2, u2, cnt2, r, &run2);
    // never past the nucleus' last element (rounding), never an empty group
    if (cnt2 < 1 || u2 < u_last || (u2 == u_last && k2 > k_last)) {
        u2 = u_last;
        k2 = k_last;
    }
    // the k2-th index (in index order) whose probability has bits u2
    const int c = ch.count_eq(cutoff, u2);
    const int pre = s_block_excl_scan<int>(c, shi);
    int found = BIG_INT;
    if (k2 > pre && k2 <= pre + c) {
        const int off = ch.find(cutoff, u2, k2 - pre);
        if (off >= 0) found = lo + off;
    }
    found = s_block_min_int(found, shi);
    return found == BIG_INT ? V - 1 : found;
}

extern "C" __global__ void __launch_bounds__(SNT)
    sample(const float* __restrict__ logits, int V, const float* __restrict__ fparams, const int* __restrict__ iparams,
           const int* __restrict__ forced, unsigned long long* rng, int* out_tok, float* out_lp, float* scratch,
           int* pos_ptr, int advance_pos) {
    __shared__ float shf[33];
    __shared__ int shi[33];
    __shared__ float s_coin;
    const int b = blockIdx.x, tid = threadIdx.x;
    const float* row = logits + (size_t)b * V;
    const float temperature = fparams[0], top_p = fparams[1];
    const int want_lp = iparams[0];
    const int f = forced[b];
    int tok;
    if (f >= 0) {
        tok = f;
    } else if (temperature == 0.0f) {
        tok = block_argmax(row, V, shf, shi);
    } else {
        float* p = scratch + (size_t)b * V;
        const int C = (V + SNT - 1) / SNT;
        const int lo = min(tid * C, V), hi = min(lo + C, V);
        // softmax(logits / temperature), each thread over its own chunk
        float mx = NEG_INF;
        for (int i = lo; i < hi; i++) mx = fmaxf(mx, row[i] / temperature);
        mx = s_block_max(mx, shf);
        float s = 0.f;
        for (int i = lo; i < hi; i++) {
            const float e = expf(row[i] / temperature - mx);
            p[i] = e;
            s += e;
        }
        const float S = s_block_sum(s, shf);
        for (int i = lo; i < hi; i++) p[i] = p[i] / S;
        if (tid == 0) s_coin = next_coin(rng + b);
        __syncthreads();
        const float coin = s_coin;

        if (top_p <= 0.0f || top_p >= 1.0f) {
            // first index where the running sum exceeds coin (the last index if none)
            float loc = 0.f;
            for (int i = lo; i < hi; i++) loc += p[i];
            float run = s_block_excl_scan<float>(loc, shf);
            int cand = BIG_INT;
            for (int i = lo; i < hi; i++) {
                run += p[i];
                if (run > coin) {
                    cand = i;
                    break;
                }
            }
            cand = s_block_min_int(cand, shi);
            tok = cand == BIG_INT ? V - 1 : cand;
        } else {
            if (hi - lo <= RC) {
                RegChunk ch;
                ch.n = hi - lo;
#pragma unroll
                for (int j = 0; j < RC; j++) ch.v[j] = j < ch.n ? p[lo + j] : 0.f;
                tok = nucleus(ch, lo, V, top_p, coin, shf, shi);
            } else {
                tok = nucleus(MemChunk{p, lo, hi}, lo, V, top_p, coin, shf, shi);
            }
        }
    }
    float lp = 0.f;
    if (want_lp) {
        float mx = NEG_INF;
        for (int i = tid; i < V; i += SNT) mx = fmaxf(mx, row[i]);
        mx = s_block_max(mx, shf);
        float s = 0.f;
        for (int i = tid; i < V; i += SNT) s += expf(row[i] - mx);
        s = s_block_sum(s, shf);
        lp = row[tok] - mx - logf(s);
    }
    if (tid == 0) {
        out_tok[b] = tok;
        out_lp[b] = lp;
        if (advance_pos && b == 0) *pos_ptr += 1;
    }
}
