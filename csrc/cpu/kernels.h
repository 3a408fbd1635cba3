// CPU kernels of llama2py: raw-pointer building blocks shared by the standalone kernel functions
// (exposed to Python for tests) and by the Model's forward pass.
//
// Threading convention: every function here that splits work does so with an *orphaned*
// `#pragma omp for` (no `parallel`). Called from inside a `#pragma omp parallel` region, all threads
// of the team must call it and share the work; called outside one, it simply runs on one thread.
// Work-sharing loops end with the implied barrier, so consecutive calls are ordered.
//
// Numerics: every float32 dot product of a matrix-vector (GEMV) and matrix-matrix (GEMM) product is
// accumulated in the same order at one ISA level (8 lanes over k in steps of 8, a zero-masked tail,
// then a fixed horizontal sum), whatever the tiling or the number of independent chains a kernel
// keeps in flight. A batch row, a prefill row and a single decode step are therefore bitwise equal.
// Q8_0 products: exact int32 dots per group, then a sequential float sum over the groups.
//
// Every `#pragma omp parallel` of the extension asks for its team through team_size() (below).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

namespace l2p {

// ---- threads and fork() -----------------------------------------------------------------------------
// libgomp's team threads do not survive fork(): a child that asks for a team of more than one thread
// after its parent had one waits forever (multiprocessing's "fork" start method, a server that forks
// workers after loading a model). team_size(wanted) is the team every parallel region asks for:
// `wanted`, or 1 in a process forked after this extension had started a team (results are the same
// for every team size). watch_fork() installs the handler that notices the fork (at module load;
// only with libgomp: LLVM's libomp starts its team again in the child). A team that another library
// of the process started through libgomp is not seen.
int team_size(int wanted);
int default_team();  // team_size(omp_get_max_threads()): regions outside a Model
bool forked_team();  // this process was forked after a team had started: every region runs on one thread
void watch_fork();

// ---- weights --------------------------------------------------------------------------------------
// One Q8_0 matrix (d, n) as a v2 file stores a part of a tensor: int8 values row-major and one float
// scale per group of gs consecutive values of the flattened part (value = q * s). A group may
// straddle rows when gs does not divide n: the group of (r, k) is (r * n + k) / gs.
struct QMat {
    const int8_t* q = nullptr;  // (d, n)
    const float* s = nullptr;   // (d * n / gs,)
    // Optional copy of s turned so that a block of 8 rows is a lane each, built by turn_scales
    // (gs divides n): the 8-row GEMV reads each group's 8 scales with one load instead of a gather.
    const float* st = nullptr;  // (d / 8, n / gs, 8); null: read s
    // Optional packed copy for the VNNI kernels (pack_q8, levels with KernelTable::q8_packed): whole
    // blocks of 16 rows, each group's values 4 bytes of each row side by side, so one 64-byte load
    // feeds one vpdpbusd that advances 16 outputs (no horizontal sums), and their scales 16 wide.
    const uint8_t* packed = nullptr;  // (d / 16, n / gs, gs / 4, 16, 4) values + 128 (as unsigned)
    const float* st16 = nullptr;      // (d / 16, n / gs, 16) scales of the packed blocks
};
// st (d / 8, groups, 8) <- s (d, groups) for the whole blocks of 8 rows (groups = n / gs).
void turn_scales(float* st, const float* s, long d, long groups);
inline long turned_scales_size(long d, long groups) {
    return d / 8 * groups * 8;
}
// Packing (QMat::packed) needs whole groups per row and a group size the packed kernels are built
// for (the sizes llama2.c's export picks that are multiples of 4). Rows past the last whole block
// of 16 stay on the unpacked path.
inline bool q8_packed_group(int gs) {
    return gs == 4 || gs == 8 || gs == 16 || gs == 32 || gs == 64;
}
inline bool q8_packable(long d, long n, int gs) {
    return q8_packed_group(gs) && n % gs == 0 && d >= 16;
}
inline long packed_q8_bytes(long d, long n) {  // values; the scales take packed_q8_scales floats
    return d / 16 * 16 * n;
}
inline long packed_q8_scales(long d, long n, int gs) {
    return d / 16 * 16 * (n / gs);
}
// packed (packed_q8_bytes) and st16 (packed_q8_scales) <- q (d, n), s (d * n / gs,); needs q8_packable.
void pack_q8(uint8_t* packed, float* st16, const int8_t* q, const float* s, long d, long n, int gs);
// The copies one Q8_0 product (d, n) reads besides its values and scales, sized in one place: at a
// packed level (pack) the packed values and their scales, where q8_packable; the turned scales where
// groups do not straddle rows and some rows stay outside the packed blocks.
struct Q8Extras {
    long turned = 0;          // floats of QMat::st (turned_scales_size), 0: none
    long packed = 0;          // bytes of QMat::packed (packed_q8_bytes), 0: none
    long packed_scales = 0;   // floats of QMat::st16 (packed_q8_scales)
    bool all_packed = false;  // every row in a packed block: QMat::q and s are never read
    size_t bytes() const { return sizeof(float) * (turned + packed_scales) + packed; }
};
Q8Extras q8_extras(long d, long n, int gs, bool pack);
// Make the copies q8_extras(d, n, gs, pack) lists for m (q and s set) into turned, packed and st16
// (of those sizes; null where 0) and point m at them.
void prepare_q8(QMat& m, long d, long n, int gs, bool pack, float* turned, uint8_t* packed, float* st16);
// One (d, n) weight matrix: float32 (f) or Q8_0 (q); exactly one is set.
struct Matrix {
    const float* f = nullptr;  // (d, n)
    QMat q;
};
// Activation rows quantized for Q8_0 products (runq.c's arithmetic): per row, groups of gs values
// along the row (the last one shorter when gs does not divide n), s = max|x| / 127,
// q = round(x / s) with halves away from zero (C's roundf); a group of zeros gets s = 0, q = 0.
// A group holding NaN or inf gets a NaN or inf scale and q = 0, so its products are NaN: a
// non-finite activation reaches the logits (where runq's cast of NaN is undefined).
struct QRows {
    const int8_t* q;  // (rows, ldq) int8
    const float* s;   // (rows, lds) one scale per group
    long ldq, lds;
    int gs;
    const int32_t* sum = nullptr;  // (rows, lds) each group's sum of q (the packed kernels need it); or null
};
// sum (ceil(n / gs),) <- each group's sum of q (n,)
void q8_group_sums(int32_t* sum, const int8_t* q, int n, int gs);
// Quantize one row x (n,) into q (n,) and s (ceil(n / gs),); the same bits at every ISA level
// (the level's kernel: exact rounding either way).
void quantize_row(int8_t* q, float* s, const float* x, int n, int gs);
// C's round() (halves away from zero) for |v| < 2^31, without a libm call: the truncation is
// exact, and so is v - trunc(v). NaN (a NaN activation) gives 0, as the vector kernels' truncation
// does (converting NaN to int is undefined in C++).
inline int round_half_away(float v) {
    if (v != v) return 0;
    int i = (int)v;
    const float frac = v - (float)i;
    if (frac >= 0.5f) ++i;
    if (frac <= -0.5f) --i;
    return i;
}
inline int q8_groups(int n, int gs) {
    return (int)(((long)n + gs - 1) / gs);  // (n + gs - 1 overflows int for gs near INT_MAX)
}

// ---- matrix products -----------------------------------------------------------------------------
// One product: out[r * ldo + j] = sum_k x[r * ldx + k] * w[j * n + k]
//   w   (d, n) row-major weights (the (out, in) layout of llama2.c)
//   x   (rows, n) activations, row stride ldx
//   out (rows, d) outputs, row stride ldo
// Q8_0 weights (w.q): x is read already quantized (QRows) and every output is runq's
//   acc = 0; for each run of k where the weight's group and x's group are both constant, in order:
//   acc += ((float)int32 dot of the run * w scale) * x scale.
// When gs divides n the runs are the groups (runq exactly); otherwise a slower general path.
// Integer dots are exact and the float sum is sequential, so Q8_0 results are bitwise the same at
// every ISA level, in every tiling and batch size.
// Work fused into a product: called by the thread that computed output features [r0, r0 + nr)
// for every activation row, right after computing them (RoPE, cache stores, residual, SwiGLU).
struct Epilogue {
    virtual void run(int r0, int nr) const = 0;
    virtual ~Epilogue() = default;
};

struct MatJob {
    Matrix w;
    int d;  // output features (rows of w)
    float* out;
    long ldo;         // row stride of out
    Matrix w_gate{};  // optional second (d, n) matrix, same block, into out_gate (w3 next to w1)
    float* out_gate = nullptr;
    const Epilogue* epi = nullptr;
};

// Run up to a few products that share the same input rows in one work-sharing loop
// (q/k/v, or w1/w3): fewer barriers per layer. xq: the rows quantized, for Q8_0 jobs (else null).
// stream: the weights come from DRAM rather than cache (models much larger than the caches);
// picks the GEMV access pattern that streams best. Results are bitwise the same either way.
void matmul_jobs(const MatJob* jobs, int njobs, const float* x, long ldx, int rows, int n, bool stream = false,
                 const QRows* xq = nullptr);

// Convenience: one float32 product.
void matmul(float* out, long ldo, const float* x, long ldx, int rows, const float* w, int d, int n,
            bool stream = false);

// Weights larger than this (bytes) are treated as streamed from DRAM.
constexpr long STREAM_BYTES = 16L << 20;

// ---- instruction-set levels -------------------------------------------------------------------------
// The kernels whose speed depends on SIMD are compiled once per level (kernels_isa.inc included by
// isa_*.cpp, each with its own target and namespace); one table is chosen when the extension
// loads: the best level the CPU supports (__builtin_cpu_supports; CPUID for AVX-VNNI), or a lower
// one forced by LLAMA2PY_ISA. Within one level a decode step, a batch row and a prefill row are
// bitwise equal; across levels float32 results differ by rounding (FMA vs separate multiply-add),
// Q8_0 ones not.
// avxvnni: AVX2 with the 256-bit vpdpbusd (Intel's cores without AVX-512 since Alder Lake, AMD's
// Zen 5); on CPUs that have AVX-512 VNNI instead the same source runs with that encoding.
enum Isa { ISA_GENERIC = 0, ISA_AVX2 = 1, ISA_AVXVNNI = 2, ISA_AVX512 = 3, ISA_AVX512VNNI = 4, ISA_COUNT };
// Compilers that know the avxvnni target (its VEX-encoded instructions): GCC 11, clang 12 and later.
#if (defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11)
#define L2P_HAVE_AVXVNNI_TARGET 1
#else
#define L2P_HAVE_AVXVNNI_TARGET 0
#endif

struct KernelTable {
    Isa isa;
    bool q8_packed;  // its Q8_0 products read QMat::packed where set (and need QRows::sum)
    void (*matmul_jobs)(const MatJob* jobs, int njobs, const float* x, long ldx, int rows, int n, bool stream,
                        const QRows* xq);
    void (*rmsnorm_row)(float* o, const float* x, const float* w, int n);
    void (*attention)(float* out, const float* q, const float* k_cache, const float* v_cache, const int* seq,
                      const int* positions, int rows, int n_heads, int n_kv_heads, int head_size, int seq_len,
                      float* scratch);
    // Sampling's row kernels, each bitwise the plain loop it replaces (kernels.cpp: softmax, argmax,
    // sample_topp): for k rows, e[r] (n,) = exp(x[r] / temperature - max) and sums[r] = their
    // sequential float32 sum (softmax before its division; e[r] may be x[r]), the first index of the
    // maximum, and the indices (in order) of the values >= cutoff.
    void (*exp_rows)(float* const* e, const float* const* x, int k, int n, float temperature, float* sums);
    int (*argmax)(const float* x, int n);
    int (*at_least)(int* idx, const float* p, int n, float cutoff);
    void (*quantize_row)(int8_t* q, float* s, const float* x, int n, int gs);
    // The greedy sketch's bounds (model.cpp, argmax_classifier) over n sketch logits a of one input
    // row with stats (row_l1, row_amax, row_t): each a[i] becomes its upper bound a[i] + m (m: the
    // margin of its rounding errors, kernels_isa.inc); returns the larger of best and every a[i] - m
    // (NaN never wins).
    float (*sketch_bound)(float* a, const float* s_max, const float* l1, int n, float row_l1, float row_amax,
                          float row_t, float g, float best);
    // One float32 dot product a (n,) . b (n,) summed exactly as every product above sums an output,
    // so it equals that output bit for bit (the greedy classifier recomputes single logits with it).
    float (*dot)(const float* a, const float* b, int n);
};
namespace isa_generic {
extern const KernelTable table;
}
namespace isa_avx2 {
extern const KernelTable table;
}
namespace isa_avxvnni {  // VEX encoding (isa_avxvnni.cpp)
extern const KernelTable table;
}
namespace isa_avxvnni_evex {  // the same kernels, EVEX encoding (isa_avxvnni_evex.cpp)
extern const KernelTable table;
}
namespace isa_avx512 {
extern const KernelTable table;
}
namespace isa_avx512vnni {
extern const KernelTable table;
}

const char* isa_name(Isa isa);
bool isa_supported(Isa isa);  // the CPU (and the OS) can run this level
Isa isa_best();
// The table in use. select_isa: by name ("generic", "avx2", "avx512", "avx512vnni") or "" for the
// best; returns an error message ("" when done).
const KernelTable& kernels();
std::string select_isa(const std::string& name);

// ---- shared elementwise helpers (the fused and the separate kernels use the same arithmetic) -----
// Rotate the pairs of v[i0..i1) (i0 even) whose index inside a head is i % head_size;
// cs (head_size/2, 2) = (cos, sin) of the row's position.
inline void rope_span(float* v, int i0, int i1, int head_size, const float* cs) {
    for (int i = i0; i < i1; i += 2) {
        const int j = (i % head_size) / 2;
        const float co = cs[2 * j], si = cs[2 * j + 1];
        const float a = v[i], b = v[i + 1];
        v[i] = a * co - b * si;
        v[i + 1] = a * si + b * co;
    }
}
inline float silu_mul(float z, float g) {
    return z / (1.0f + expf(-z)) * g;
}

// ---- elementwise / per-row kernels (rows split across threads) -------------------------------------
// out (rows, n) = w (n,) * x / sqrt(mean(x^2) + 1e-5), per row. out may alias x.
void rmsnorm(float* out, const float* x, const float* w, int rows, int n);
// One row on the calling thread only (no work sharing). o may alias x.
void rmsnorm_row(float* o, const float* x, const float* w, int n);
// x (rows, n_heads * head_size) rotated in place; row r at position positions[r];
// cos_sin (seq_len, head_size/2, 2) table of (cos, sin).
void rope(float* x, int rows, int n_heads, int head_size, const int* positions, const float* cos_sin);
// h (rows, n) = silu(h) * g
void swiglu(float* h, const float* g, int rows, int n);

// ---- attention ------------------------------------------------------------------------------------
// For each row r = (b, t) and query head h:
//   q       (rows, n_heads * head_size), row r belongs to sequence seq[r] at position positions[r]
//   k_cache (n_slots, seq_len, kv_dim) of one layer; v_cache the same
//   out     (rows, n_heads * head_size)
//   scratch (n_threads, n_heads, seq_len) per-thread scores
// Called by every thread of a parallel region (it shares the work out and ends with a barrier).
void attention(float* out, const float* q, const float* k_cache, const float* v_cache, const int* seq,
               const int* positions, int rows, int n_heads, int n_kv_heads, int head_size, int seq_len, float* scratch);

// ---- sampling ------------------------------------------------------------------------------------
// run.c's xorshift64* generator: one draw, coin in [0, 1) with 24 bits.
uint32_t rng_u32(uint64_t* state);
float rng_coin(uint64_t* state);
int argmax(const float* x, int n);  // first index of the maximum
// probs (n,) = softmax(x): float32, subtract the max, sequential sum (as run.c). probs may alias x.
void softmax(float* probs, const float* x, int n);
// A draw reads softmax's probabilities probs[i] = e[i] / sum (e, sum: KernelTable::exp_rows) without
// a pass that divides them all: each probability it reads is that division, made where it is read.
// Multinomial: the first i whose running sum of probs passes coin, as run.c.
int sample_mult(const float* e, float sum, int n, float coin);
// Nucleus sampling exactly as run.c; e (n,) is overwritten (its candidates' entries become their
// probabilities); idx (n,) and cand (n,) are scratch.
int sample_topp(float* e, float sum, int n, float top_p, float coin, int* idx, float* cand);
// One full sampling decision for a logits row (temperature 0 -> argmax, else temper, softmax,
// one coin, multinomial or top-p). probs (n,), idx (n,), cand (n,) are scratch.
// kt: the kernels of the caller's level (a Model's own, so that its batch and single-row steps agree).
int sample(const KernelTable& kt, const float* logits, int n, double temperature, double top_p, uint64_t* state,
           float* probs, int* idx, float* cand);
// The draw of sample() once e (n,) and sum hold the tempered exponentials (exp_rows): one coin,
// multinomial or top-p. e is overwritten.
int sample_exps(float* e, float sum, int n, double top_p, uint64_t* state, int* idx, float* cand);
// log softmax(x)[token] in double precision
double log_softmax_at(const float* x, int n, int token);

// (head_size/2, 2) RoPE cos/sin of one position as run.c computes them: freq = 1 / 10000^(j / head_size)
void rope_row(float* out, int pos, int head_size);
// (seq_len, head_size/2, 2): rope_row of positions 0..seq_len-1
void rope_table(float* out, int seq_len, int head_size);

}  // namespace l2p
