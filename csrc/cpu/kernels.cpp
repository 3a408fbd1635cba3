// CPU kernels: see kernels.h for the conventions (orphaned work-sharing, fixed accumulation order).
// This file holds what does not depend on the instruction set (the choice of level included);
// the SIMD kernels are in kernels_isa.inc, compiled once per level by isa_*.cpp.
#include "kernels.h"

#include <omp.h>
#ifndef _WIN32
#include <pthread.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>

namespace l2p {

// ---- threads and fork() (kernels.h) ---------------------------------------------------------------
namespace {
std::atomic<bool> team_started{false};  // a region of more than one thread has begun in this process
std::atomic<bool> one_thread{false};    // forked after that: libgomp's team threads are gone
void after_fork_in_child() {
    if (team_started.load(std::memory_order_relaxed)) one_thread.store(true, std::memory_order_relaxed);
}
// Only GNU libgomp (g++ builds) loses its team at fork(); LLVM's libomp (clang builds) starts it again.
#ifdef _LIBGOMP_OMP_LOCK_DEFINED
constexpr bool TEAM_LOST_AT_FORK = true;
#else
constexpr bool TEAM_LOST_AT_FORK = false;
#endif
}  // namespace

int team_size(int wanted) {
    if (one_thread.load(std::memory_order_relaxed)) return 1;
    if (wanted > 1 && !team_started.load(std::memory_order_relaxed))
        team_started.store(true, std::memory_order_relaxed);
    return wanted;
}

bool forked_team() {
    return one_thread.load(std::memory_order_relaxed);
}

int default_team() {
    return team_size(omp_get_max_threads());
}

void watch_fork() {
#ifndef _WIN32
    static const int installed = TEAM_LOST_AT_FORK ? pthread_atfork(nullptr, nullptr, after_fork_in_child) : 0;
    (void)installed;
#endif
}

// ---- instruction-set levels ----------------------------------------------------------------------------
static const char* const ISA_NAMES[ISA_COUNT] = {"generic", "avx2", "avxvnni", "avx512", "avx512vnni"};

const char* isa_name(Isa isa) {
    return ISA_NAMES[isa];
}

namespace {
struct Cpu {
    bool avx2 = false, avxvnni = false, avx512 = false, avx512vnni = false;
};
Cpu cpu() {
    Cpu c;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    c.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    c.avx512 = c.avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    c.avx512vnni = c.avx512 && __builtin_cpu_supports("avx512vnni");
#if L2P_HAVE_AVXVNNI_TARGET
    // AVX-VNNI: CPUID leaf 7, sub-leaf 1, EAX bit 4 (the YMM state is the OS's as for AVX2);
    // __builtin_cpu_supports("avxvnni") is GCC 11+ and recent clang only
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    c.avxvnni = c.avx2 && __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) && (eax >> 4 & 1);
#endif
#endif
    return c;
}
}  // namespace

bool isa_supported(Isa isa) {
    const Cpu c = cpu();
    switch (isa) {
        case ISA_GENERIC:
            return true;
        case ISA_AVX2:
            return c.avx2;
        case ISA_AVXVNNI:
            return c.avxvnni || c.avx512vnni;
        case ISA_AVX512:
            return c.avx512;
        case ISA_AVX512VNNI:
            return c.avx512vnni;
        default:
            return false;
    }
}

// The table of a level; the avxvnni level in the encoding this CPU runs.
static const KernelTable* table_of(Isa isa) {
    switch (isa) {
        case ISA_AVX2:
            return &isa_avx2::table;
        case ISA_AVXVNNI:
            return cpu().avxvnni ? &isa_avxvnni::table : &isa_avxvnni_evex::table;
        case ISA_AVX512:
            return &isa_avx512::table;
        case ISA_AVX512VNNI:
            return &isa_avx512vnni::table;
        default:
            return &isa_generic::table;
    }
}

Isa isa_best() {
    for (int i = ISA_COUNT - 1; i > 0; --i)
        if (isa_supported((Isa)i)) return (Isa)i;
    return ISA_GENERIC;
}

static std::atomic<const KernelTable*> current{nullptr};

const KernelTable& kernels() {
    const KernelTable* t = current.load(std::memory_order_acquire);
    if (!t) {
        t = table_of(isa_best());
        current.store(t, std::memory_order_release);
    }
    return *t;
}

// name in quotes, control characters and bytes past ASCII as \xHH (the message stays one line of
// valid UTF-8, which Python decodes)
static std::string quoted(const std::string& name) {
    std::string out = "'";
    for (const unsigned char ch : name) {
        if (ch < 0x20 || ch >= 0x7f) {
            const char* hex = "0123456789abcdef";
            out += std::string("\\x") + hex[ch >> 4] + hex[ch & 15];
        } else {
            out += (char)ch;
        }
    }
    return out + "'";
}

std::string select_isa(const std::string& name) {
    if (name.empty()) {
        current.store(table_of(isa_best()));
        return "";
    }
    for (int i = 0; i < ISA_COUNT; ++i)
        if (name == ISA_NAMES[i]) {
            if (!isa_supported((Isa)i))
                return "instruction set level " + quoted(name) +
                       " is not supported by this CPU (best: " + ISA_NAMES[isa_best()] + ")";
            current.store(table_of((Isa)i));
            return "";
        }
    std::string names;
    for (int i = 0; i < ISA_COUNT; ++i)
        names += std::string(i ? (i + 1 < ISA_COUNT ? ", " : " or ") : "") + ISA_NAMES[i];
    return "unknown instruction set level " + quoted(name) + " (choose " + names + ")";
}

// ---- the level's kernels behind the plain names --------------------------------------------------------
void matmul_jobs(const MatJob* jobs, int njobs, const float* x, long ldx, int rows, int n, bool stream,
                 const QRows* xq) {
    kernels().matmul_jobs(jobs, njobs, x, ldx, rows, n, stream, xq);
}

void matmul(float* out, long ldo, const float* x, long ldx, int rows, const float* w, int d, int n, bool stream) {
    MatJob job{Matrix{w, {}}, d, out, ldo};
    matmul_jobs(&job, 1, x, ldx, rows, n, stream);
}

void rmsnorm_row(float* o, const float* x, const float* w, int n) {
    kernels().rmsnorm_row(o, x, w, n);
}

void attention(float* out, const float* q, const float* k_cache, const float* v_cache, const int* seq,
               const int* positions, int rows, int n_heads, int n_kv_heads, int head_size, int seq_len,
               float* scratch) {
    kernels().attention(out, q, k_cache, v_cache, seq, positions, rows, n_heads, n_kv_heads, head_size, seq_len,
                        scratch);
}

// ---- Q8_0 activations ------------------------------------------------------------------------------------
void turn_scales(float* st, const float* s, long d, long groups) {
    for (long b = 0; b < d / 8; ++b)
        for (long g = 0; g < groups; ++g)
            for (int j = 0; j < 8; ++j) st[(b * groups + g) * 8 + j] = s[(b * 8 + j) * groups + g];
}

void pack_q8(uint8_t* packed, float* st16, const int8_t* q, const float* s, long d, long n, int gs) {
    const long groups = n / gs, chunks = gs / 4;
#pragma omp parallel for num_threads(default_team()) schedule(static)
    for (long b = 0; b < d / 16; ++b)
        for (long g = 0; g < groups; ++g) {
            uint8_t* dst = packed + (b * groups + g) * gs * 16;  // (chunks, 16, 4)
            for (int r = 0; r < 16; ++r) {
                const int8_t* src = q + (b * 16 + r) * n + g * gs;
                for (long k = 0; k < chunks; ++k)
                    for (int j = 0; j < 4; ++j) dst[(k * 16 + r) * 4 + j] = (uint8_t)(src[4 * k + j] ^ 0x80);
                st16[(b * groups + g) * 16 + r] = s[((b * 16 + r) * n) / gs + g];
            }
        }
}

Q8Extras q8_extras(long d, long n, int gs, bool pack) {
    Q8Extras e;
    const bool packs = pack && q8_packable(d, n, gs);
    if (packs) {
        e.packed = packed_q8_bytes(d, n);
        e.packed_scales = packed_q8_scales(d, n, gs);
    }
    // the unpacked path reads turned scales for whole blocks of 8 rows only
    const long unpacked_rows = packs ? d % 16 : d;
    e.all_packed = packs && unpacked_rows == 0;
    if (n % gs == 0 && unpacked_rows >= 8) e.turned = turned_scales_size(d, n / gs);
    return e;
}

void prepare_q8(QMat& m, long d, long n, int gs, bool pack, float* turned, uint8_t* packed, float* st16) {
    const Q8Extras e = q8_extras(d, n, gs, pack);
    if (e.turned) {
        turn_scales(turned, m.s, d, n / gs);
        m.st = turned;
    }
    if (e.packed) {
        pack_q8(packed, st16, m.q, m.s, d, n, gs);
        m.packed = packed;
        m.st16 = st16;
    }
}

void q8_group_sums(int32_t* sum, const int8_t* q, int n, int gs) {
    for (int g = 0; g * gs < n; ++g) {
        int32_t t = 0;
        for (int k = g * gs; k < std::min(n, (g + 1) * gs); ++k) t += q[k];
        sum[g] = t;
    }
}

void quantize_row(int8_t* q, float* s, const float* x, int n, int gs) {
    kernels().quantize_row(q, s, x, n, gs);
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

void rope_row(float* out, int pos, int head_size) {
    for (int i = 0; i < head_size / 2; ++i) {
        const float freq = 1.0f / powf(10000.0f, (float)(2 * i) / (float)head_size);
        const float val = (float)pos * freq;
        out[2 * i] = cosf(val);
        out[2 * i + 1] = sinf(val);
    }
}

void rope_table(float* out, int seq_len, int head_size) {
    for (int p = 0; p < seq_len; ++p) rope_row(out + (long)p * head_size, p, head_size);
}

void swiglu(float* h, const float* g, int rows, int n) {
    const long total = (long)rows * n;
#pragma omp for schedule(static)
    for (long i = 0; i < total; ++i) h[i] = silu_mul(h[i], g[i]);
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
    return kernels().argmax(x, n);
}

void softmax(float* probs, const float* x, int n) {
    float sum;
    kernels().exp_rows(&probs, &x, 1, n, 1.0f, &sum);
    for (int i = 0; i < n; ++i) probs[i] /= sum;
}

int sample_mult(const float* e, float sum, int n, float coin) {
    float cdf = 0.f;
    for (int i = 0; i < n; ++i) {
        cdf += e[i] / sum;  // probs[i]
        if (coin < cdf) return i;
    }
    return n - 1;
}

namespace {
// The sort key of a probability for descending order: non-negative floats order like their bit
// patterns, so the complemented bits order descending; a stable sort keeps ties in index order.
inline uint32_t descending_key(const float* probs, int id) {
    uint32_t key;
    std::memcpy(&key, probs + id, 4);
    return ~key;
}

// One stable counting pass of an LSD radix sort: src (m,) -> dst (m,) by the key's byte at shift.
void radix_pass(const float* probs, const int* src, int* dst, int m, int shift) {
    int count[257] = {0};
    for (int i = 0; i < m; ++i) ++count[(descending_key(probs, src[i]) >> shift & 0xff) + 1];
    for (int b = 0; b < 256; ++b) count[b + 1] += count[b];
    for (int i = 0; i < m; ++i) dst[count[descending_key(probs, src[i]) >> shift & 0xff]++] = src[i];
}
}  // namespace

int sample_topp(float* e, float sum, int n, float top_p, float coin, int* idx, float* cand) {
    const float cutoff = (1.0f - top_p) / (float)(n - 1);
    float* const probs = e;  // the candidates' entries become their probabilities
    int m = 0;
    if (std::isfinite(sum) && sum > 0.f) {
        // The candidates, probs[i] = e[i] / sum >= cutoff, without dividing every entry: a quotient
        // that rounds to cutoff or above is at least cutoff * (1 - 2^-24), so e[i] >= sum * cutoff
        // * (1 - 2^-24) for each; `below` is under that (a margin of 2^-21 covers its two roundings),
        // so the entries at or above it hold every candidate, and their quotients pick them exactly.
        const float below = sum * cutoff * (1.0f - 0x1p-21f);
        const int k = kernels().at_least(idx, e, n, below);
        for (int j = 0; j < k; ++j) {
            const int i = idx[j];
            const float p = e[i] / sum;
            if (p >= cutoff) {
                probs[i] = p;
                idx[m++] = i;  // in index order, as at_least gives them
            }
        }
    }
    if (m == 0) {  // none (top_p < 1/n), or a NaN sum: run's loop over every probability
        for (int i = 0; i < n; ++i) probs[i] = e[i] / sum;
        m = kernels().at_least(idx, probs, n, cutoff);
        if (m == 0) return argmax(probs, n);  // keep it defined
    }
    // The candidates in descending probability, ties in index order (idx arrives in index order),
    // summed in that order until the sum passes top_p: only that prefix of the order is needed.
    const auto before = [probs](int a, int b) { return probs[a] > probs[b] || (probs[a] == probs[b] && a < b); };
    float cum = 0.f;
    int last = m - 1;
    const auto sum_until_top_p = [&](int lo, int hi) {  // cand[i] = the sum through idx[i]; true once past top_p
        for (int i = lo; i < hi; ++i) {
            cum += probs[idx[i]];
            cand[i] = cum;
            if (cum > top_p) {
                last = i;
                return true;
            }
        }
        return false;
    };
    if (m <= 256) {
        std::sort(idx, idx + m, before);
        sum_until_top_p(0, m);
    } else {
        // Many candidates (flat distributions): grouped by the key's top byte (the exponent: each
        // group a range of probabilities, the groups in descending order) with one stable pass, then
        // each group sorted by the other three bytes only until the sum passes top_p, which the
        // first groups' few large probabilities usually do: the same order and sums as sorting all.
        // cand (n floats) doubles as the ids' second buffer: group g's ids are sorted into idx
        // before cand's entries of that group are written.
        static_assert(sizeof(float) == sizeof(int), "cand doubles as an int buffer");
        int* grouped = reinterpret_cast<int*>(cand);
        int start[257] = {0};
        for (int i = 0; i < m; ++i) ++start[(descending_key(probs, idx[i]) >> 24) + 1];
        for (int b = 0; b < 256; ++b) start[b + 1] += start[b];
        {
            int at[256];
            std::memcpy(at, start, sizeof(at));
            for (int i = 0; i < m; ++i) grouped[at[descending_key(probs, idx[i]) >> 24]++] = idx[i];
        }
        for (int g = 0; g < 256; ++g) {
            const int lo = start[g], k = start[g + 1] - start[g];
            if (k == 0) continue;
            if (k <= 256) {
                std::copy(grouped + lo, grouped + lo + k, idx + lo);
                std::sort(idx + lo, idx + lo + k, before);
            } else {  // three stable passes, grouped -> idx -> grouped -> idx
                radix_pass(probs, grouped + lo, idx + lo, k, 0);
                radix_pass(probs, idx + lo, grouped + lo, k, 8);
                radix_pass(probs, grouped + lo, idx + lo, k, 16);
            }
            if (sum_until_top_p(lo, lo + k)) break;
        }
    }
    const float r = coin * cand[last];
    for (int i = 0; i <= last; ++i)
        if (r < cand[i]) return idx[i];
    return idx[last];
}

int sample(const KernelTable& kt, const float* logits, int n, double temperature, double top_p, uint64_t* state,
           float* probs, int* idx, float* cand) {
    if (temperature == 0.0) return kt.argmax(logits, n);
    float sum;
    kt.exp_rows(&probs, &logits, 1, n, (float)temperature, &sum);
    return sample_exps(probs, sum, n, top_p, state, idx, cand);
}

int sample_exps(float* e, float sum, int n, double top_p, uint64_t* state, int* idx, float* cand) {
    const float coin = rng_coin(state);
    if (top_p <= 0.0 || top_p >= 1.0) return sample_mult(e, sum, n, coin);
    return sample_topp(e, sum, n, (float)top_p, coin, idx, cand);
}

double log_softmax_at(const float* x, int n, int token) {
    double mx = x[0];
    for (int i = 1; i < n; ++i) mx = std::max(mx, (double)x[i]);
    double s = 0.0;
    for (int i = 0; i < n; ++i) s += std::exp((double)x[i] - mx);
    return (double)x[token] - mx - std::log(s);
}

}  // namespace l2p
