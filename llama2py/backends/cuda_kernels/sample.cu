// llama2py CUDA kernels: the run-compatible sampler (docs/FORMAT.md, "Sampler").
//
// One block of SAMPLER_THREADS threads per batch row. Greedy = argmax (first index on ties). Otherwise
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
// logprob_flag[0] set, out_logprobs gets log softmax(raw logits)[token]. With advance_pos, block 0 increments
// *pos_ptr at the end (the captured decode graph advances its own position).

#include "block_reduce.cuh"

// The block size, shared with the host (llama2py/backends/cuda.py KERNEL_CONSTANTS, passed as -D).
#ifndef SAMPLER_THREADS
#error "SAMPLER_THREADS is not defined: pass -DSAMPLER_THREADS=... from llama2py/backends/cuda.py KERNEL_CONSTANTS"
#endif

// The warp's inclusive and exclusive prefix sums of v, in lane order.
template <class V>
static __device__ __forceinline__ void warp_scan(V v, V* inclusive, V* exclusive) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const V t = __shfl_up_sync(WARP_FULL, v, o);
        if (lane >= o) v += t;
    }
    V e = __shfl_up_sync(WARP_FULL, v, 1);
    if (lane == 0) e = V(0);
    *inclusive = v;
    *exclusive = e;
}

// Exclusive prefix over threads in thread order (thread t owns the t-th contiguous chunk).
template <class V>
static __device__ V block_exclusive_scan(V v, V* shared) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    V inc, excl;
    warp_scan(v, &inc, &excl);
    __syncthreads();
    if (lane == 31) shared[warp] = inc;
    __syncthreads();
    if (warp == 0) {
        V warp_inc, warp_excl;
        warp_scan(shared[lane], &warp_inc, &warp_excl);
        shared[lane] = warp_excl;  // exclusive offset of warp `lane`
    }
    __syncthreads();
    const V r = shared[warp] + excl;
    __syncthreads();
    return r;
}

// run's xorshift64*: state ^= state >> 12; ^= << 25; ^= >> 27; (state * 0x2545F4914F6CDD1D) >> 32
static __device__ __forceinline__ float next_coin(unsigned long long* state) {
    unsigned long long s = *state;
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    *state = s;
    const unsigned int u = (unsigned int)((s * 0x2545F4914F6CDD1DULL) >> 32);
    return (float)(u >> 8) / 16777216.0f;
}

// The warp's largest value and its index (the smallest index on ties), in every lane.
static __device__ __forceinline__ void warp_argmax(float* value, int* index) {
    float best = *value;
    int best_index = *index;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(WARP_FULL, best, o);
        const int oi = __shfl_xor_sync(WARP_FULL, best_index, o);
        if (ov > best || (ov == best && oi < best_index)) {
            best = ov;
            best_index = oi;
        }
    }
    *value = best;
    *index = best_index;
}

// The block's argmax of row[0..V) (first index on ties; 0 when every value is NaN).
static __device__ int block_argmax(const float* __restrict__ row, int V, float* reduce_f, int* reduce_i) {
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    float best = NEG_INF;
    int best_index = BIG_INT;
    for (int i = tid; i < V; i += SAMPLER_THREADS) {
        const float v = row[i];
        if (v > best) {
            best = v;
            best_index = i;
        }
    }
    warp_argmax(&best, &best_index);
    __syncthreads();
    if (lane == 0) {
        reduce_f[warp] = best;
        reduce_i[warp] = best_index;
    }
    __syncthreads();
    if (warp == 0) {
        best = reduce_f[lane];
        best_index = reduce_i[lane];
        warp_argmax(&best, &best_index);
        if (lane == 0) reduce_i[REDUCE_SLOTS - 1] = best_index;
    }
    __syncthreads();
    const int r = reduce_i[REDUCE_SLOTS - 1];
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
// in registers (V <= REGISTER_CHUNK * SAMPLER_THREADS, e.g. 32768 with 1024 threads): the nucleus search makes ~70
// passes over the chunk, and registers spare each pass the global reads. Both add in the same order, so they give the
// same bits.
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
        float smallest = POS_INF;
        for (int i = lo; i < hi; i++)
            if (p[i] >= cutoff) smallest = fminf(smallest, p[i]);
        return smallest;
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

#define REGISTER_CHUNK 32
struct RegChunk {
    float v[REGISTER_CHUNK];  // (REGISTER_CHUNK,) this thread's probabilities; v[j] for j >= n is never read
    int n;
    __device__ __forceinline__ float mass(float cutoff, unsigned int u) const {
        float a = 0.f;
#pragma unroll
        for (int j = 0; j < REGISTER_CHUNK; j++)
            if (j < n && v[j] >= cutoff && (unsigned int)__float_as_int(v[j]) >= u) a += v[j];
        return a;
    }
    __device__ __forceinline__ int count_eq(float cutoff, unsigned int u) const {
        int c = 0;
#pragma unroll
        for (int j = 0; j < REGISTER_CHUNK; j++)
            c += (j < n && v[j] >= cutoff && (unsigned int)__float_as_int(v[j]) == u) ? 1 : 0;
        return c;
    }
    __device__ __forceinline__ float min_cand(float cutoff) const {
        float smallest = POS_INF;
#pragma unroll
        for (int j = 0; j < REGISTER_CHUNK; j++)
            if (j < n && v[j] >= cutoff) smallest = fminf(smallest, v[j]);
        return smallest;
    }
    __device__ __forceinline__ int find(float cutoff, unsigned int u, int k) const {
        int c = 0, at = -1;
#pragma unroll
        for (int j = 0; j < REGISTER_CHUNK; j++) {
            const bool hit = j < n && v[j] >= cutoff && (unsigned int)__float_as_int(v[j]) == u;
            c += hit ? 1 : 0;
            if (hit && c == k && at < 0) at = j;
        }
        return at;
    }
};

// Largest u with mass(u) > target, searched bit by bit (mass is nonincreasing in u); 0 if none.
template <class Chunk>
static __device__ unsigned int search_mass(const Chunk& chunk, float cutoff, float target, float* reduce_f) {
    unsigned int u = 0;
    for (int bit = 30; bit >= 0; bit--) {
        const unsigned int c = u | (1u << bit);
        if (block_sum(chunk.mass(cutoff, c), reduce_f) > target) u = c;
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
template <class Chunk>
static __device__ int nucleus(const Chunk& chunk, int lo, int V, float top_p, float coin, float* reduce_f,
                              int* reduce_i) {
    const float cutoff = (1.0f - top_p) / (float)(V - 1);
    const float total = block_sum(chunk.mass(cutoff, 0u), reduce_f);
    unsigned int u_last;
    int k_last;
    float cum_last;
    if (!(total > top_p)) {
        // no cut: the nucleus is every candidate; its last is the smallest (last index)
        const float smallest = block_min(chunk.min_cand(cutoff), reduce_f);
        u_last = (unsigned int)__float_as_int(smallest);
        k_last = block_sum(chunk.count_eq(cutoff, u_last), reduce_i);
        cum_last = total;
    } else {
        u_last = search_mass(chunk, cutoff, top_p, reduce_f);
        const float G = block_sum(chunk.mass(cutoff, u_last + 1u), reduce_f);
        const int cnt = block_sum(chunk.count_eq(cutoff, u_last), reduce_i);
        k_last = tie_rank(G, u_last, cnt, top_p, &cum_last);
    }
    const float r = coin * cum_last;
    unsigned int u2 = search_mass(chunk, cutoff, r, reduce_f);
    const float G2 = block_sum(chunk.mass(cutoff, u2 + 1u), reduce_f);
    const int cnt2 = block_sum(chunk.count_eq(cutoff, u2), reduce_i);
    float run2;
    int k2 = tie_rank(G2, u2, cnt2, r, &run2);
    // never past the nucleus' last element (rounding), never an empty group
    if (cnt2 < 1 || u2 < u_last || (u2 == u_last && k2 > k_last)) {
        u2 = u_last;
        k2 = k_last;
    }
    // the k2-th index (in index order) whose probability has bits u2
    const int c = chunk.count_eq(cutoff, u2);
    const int pre = block_exclusive_scan<int>(c, reduce_i);
    int found = BIG_INT;
    if (k2 > pre && k2 <= pre + c) {
        const int off = chunk.find(cutoff, u2, k2 - pre);
        if (off >= 0) found = lo + off;
    }
    found = block_min(found, reduce_i);
    return found == BIG_INT ? V - 1 : found;
}

extern "C" __global__ void __launch_bounds__(SAMPLER_THREADS)
    sample(const float* __restrict__ logits, int V, const float* __restrict__ sampling_params,
           const int* __restrict__ logprob_flag, const int* __restrict__ forced, unsigned long long* rng_state,
           int* out_tokens, float* out_logprobs, float* probabilities, int* pos_ptr, int advance_pos) {
    __shared__ float reduce_f[REDUCE_SLOTS];
    __shared__ int reduce_i[REDUCE_SLOTS];
    __shared__ float shared_coin;
    const int b = blockIdx.x, tid = threadIdx.x;
    const float* row = logits + (size_t)b * V;
    const float temperature = sampling_params[0], top_p = sampling_params[1];
    const int want_logprob = logprob_flag[0];
    const int forced_token = forced[b];
    int token;
    if (forced_token >= 0) {
        token = forced_token;
    } else if (temperature == 0.0f) {
        token = block_argmax(row, V, reduce_f, reduce_i);
    } else {
        float* p = probabilities + (size_t)b * V;
        const int chunk_size = (V + SAMPLER_THREADS - 1) / SAMPLER_THREADS;
        const int lo = min(tid * chunk_size, V), hi = min(lo + chunk_size, V);
        // softmax(logits / temperature), each thread over its own chunk
        float max_logit = NEG_INF;
        for (int i = lo; i < hi; i++) max_logit = fmaxf(max_logit, row[i] / temperature);
        max_logit = block_max(max_logit, reduce_f);
        float s = 0.f;
        for (int i = lo; i < hi; i++) {
            const float e = expf(row[i] / temperature - max_logit);
            p[i] = e;
            s += e;
        }
        const float total = block_sum(s, reduce_f);
        for (int i = lo; i < hi; i++) p[i] = p[i] / total;
        if (tid == 0) shared_coin = next_coin(rng_state + b);
        __syncthreads();
        const float coin = shared_coin;

        if (top_p <= 0.0f || top_p >= 1.0f) {
            // first index where the running sum exceeds coin (the last index if none)
            float chunk_sum = 0.f;
            for (int i = lo; i < hi; i++) chunk_sum += p[i];
            float run = block_exclusive_scan<float>(chunk_sum, reduce_f);
            int candidate = BIG_INT;
            for (int i = lo; i < hi; i++) {
                run += p[i];
                if (run > coin) {
                    candidate = i;
                    break;
                }
            }
            candidate = block_min(candidate, reduce_i);
            token = candidate == BIG_INT ? V - 1 : candidate;
        } else {
            if (hi - lo <= REGISTER_CHUNK) {
                RegChunk chunk;
                chunk.n = hi - lo;
#pragma unroll
                for (int j = 0; j < REGISTER_CHUNK; j++) chunk.v[j] = j < chunk.n ? p[lo + j] : 0.f;
                token = nucleus(chunk, lo, V, top_p, coin, reduce_f, reduce_i);
            } else {
                token = nucleus(MemChunk{p, lo, hi}, lo, V, top_p, coin, reduce_f, reduce_i);
            }
        }
    }
    float logprob = 0.f;
    if (want_logprob) {
        float max_logit = NEG_INF;
        for (int i = tid; i < V; i += SAMPLER_THREADS) max_logit = fmaxf(max_logit, row[i]);
        max_logit = block_max(max_logit, reduce_f);
        float s = 0.f;
        for (int i = tid; i < V; i += SAMPLER_THREADS) s += expf(row[i] - max_logit);
        s = block_sum(s, reduce_f);
        logprob = row[token] - max_logit - logf(s);
    }
    if (tid == 0) {
        out_tokens[b] = token;
        out_logprobs[b] = logprob;
        if (advance_pos && b == 0) *pos_ptr += 1;
    }
}
