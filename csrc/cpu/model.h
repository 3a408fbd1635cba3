// The CPU model: borrowed weight pointers, an owned KV cache and buffers, and the forward pass
// (decode, batched decode and chunked prefill) plus on-host sampling. Pure C++: the pybind11
// module validates arrays and keeps the weight arrays alive.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "buffer.h"
#include "kernels.h"

namespace l2p {

// The file the default threads' choice reads runnable threads from: /proc/loadavg, or
// LLAMA2PY_LOADAVG (tests fake a busy machine). Read once, at the first call: make that call with
// the GIL held (another Python thread may be changing the environment).
const char* loadavg_path();

struct ModelConfig {
    int dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
    int head_size() const { return dim / n_heads; }
    int kv_dim() const { return dim / n_heads * n_kv_heads; }
};

// Borrowed (never copied) weights; shapes as in llama2py.checkpoint.Weights. The matrices are float32
// or (group_size > 0) Q8_0 parts as a v2 file holds them, one Matrix per layer.
struct WeightPtrs {
    int group_size = 0;      // 0: float32 matrices; else Q8_0 in groups of group_size
    Matrix token_embedding;  // (vocab, dim); a Q8_0 row is dequantized when looked up
    const float* rms_att;    // (n_layers, dim)
    std::vector<Matrix> wq;  // n_layers x (dim, dim)
    std::vector<Matrix> wk;  // n_layers x (kv_dim, dim)
    std::vector<Matrix> wv;  // n_layers x (kv_dim, dim)
    std::vector<Matrix> wo;  // n_layers x (dim, dim)
    const float* rms_ffn;    // (n_layers, dim)
    std::vector<Matrix> w1;  // n_layers x (hidden_dim, dim)
    std::vector<Matrix> w2;  // n_layers x (dim, hidden_dim)
    std::vector<Matrix> w3;  // n_layers x (hidden_dim, dim)
    const float* rms_final;  // (dim,)
    Matrix wcls;             // (vocab, dim)
};

// Profile categories, in the order of llama2py.backends.base.PROFILE_KEYS.
enum Prof {
    P_EMBEDDING,
    P_RMSNORM,
    P_MATMUL,
    P_ROPE,
    P_ATTENTION,
    P_SWIGLU,
    P_RESIDUAL,
    P_CLASSIFIER,
    P_SAMPLING,
    P_COUNT
};

// LOGITS_LAST_ARGMAX (greedy decode steps): LOGITS_LAST, and each row's argmax found alongside the
// classifier's blocks (sampled steps skip it: a scalar pass over every logit, ~5% of a batch step).
// LOGITS_ARGMAX (float32 models with a classifier sketch; greedy decode steps): like
// LOGITS_LAST_ARGMAX, but only the argmax is certain to be computed: logits the sketch's bounds rule
// out are left stale.
enum LogitsMode { LOGITS_NONE = 0, LOGITS_LAST = 1, LOGITS_ALL = 2, LOGITS_ARGMAX = 3, LOGITS_LAST_ARGMAX = 4 };
// The modes that compute the last position's row of each sequence.
inline bool last_rows(LogitsMode m) {
    return m == LOGITS_LAST || m == LOGITS_LAST_ARGMAX || m == LOGITS_ARGMAX;
}

class ModelCore {
public:
    // Rows (sequence, position) processed together per prefill chunk: enough to reuse each weight
    // row from cache many times, small enough to keep the activation buffers small.
    static constexpr int PREFILL_ROWS = 64;
    // Float32 models with at least this many classifier rows get the greedy sketch (below it the
    // float32 classifier is small enough to read whole).
    static constexpr int SKETCH_MIN_VOCAB = 1024;
    static constexpr int SKETCH_MAX_ROWS = 64;  // greedy batches up to this size use the sketch

    // sketch_min_vocab: the vocabulary size from which a float32 model gets the greedy sketch
    // (SKETCH_MIN_VOCAB; LLAMA2PY_SKETCH_MIN_VOCAB, read by the caller, lowers it for tests).
    // copy_weights: float32 matrices too big for the caches copied onto huge pages (float_copy_size).
    ModelCore(const ModelConfig& c, const WeightPtrs& w, int max_batch, int n_threads, long sketch_min_vocab,
              bool copy_weights = false);

    // tokens (B, T) row-major at positions pos..pos+T-1 for slots 0..B-1 (caller validated).
    // LOGITS_LAST, LOGITS_LAST_ARGMAX, LOGITS_ARGMAX: out (B, vocab); LOGITS_ALL: out (B, T, vocab);
    // LOGITS_NONE: out unused.
    // prof (P_COUNT,) seconds added per category when non-null: the master thread's clock read at
    // the pass's own barriers (RoPE, SwiGLU and the residual adds run fused inside the products and
    // are counted there).
    void forward(const int* tokens, int B, int T, int pos, LogitsMode mode, float* out, double* prof);

    // One decode step: forward at pos, then sampling per slot. next (B,), logprobs (B,) or null,
    // forced (B,) or null (>= 0: that id, generator untouched). Logits stay in logits_ (B, vocab).
    void step(int* next, float* logprobs, const int* tokens, int B, int pos, double temperature, double top_p,
              const int* forced, double* prof);

    struct Best {
        float v;
        int i;
    };  // an argmax candidate (i < 0: none yet)

    void set_seed(int slot, uint64_t seed) { rng_[slot] = seed; }
    uint64_t rng_state(int slot) const { return rng_[slot]; }
    const float* logits() const { return logits_.data(); }
    int threads() const { return forked_team() ? 1 : n_threads_; }  // (kernels.h: team_size)
    int last_team() const { return forked_team() ? 1 : team_; }     // threads the last call ran (1 or threads())
    int max_batch() const { return max_batch_; }
    const ModelConfig& config() const { return c_; }
    const WeightPtrs& weights() const { return w_; }
    Isa isa() const { return kt_->isa; }
    size_t buffer_bytes() const;  // KV cache + buffers owned here (weights are borrowed)
    // Bytes of the packed Q8_0 copy (QMat::packed, st16) a model of this shape makes at the current
    // level (0 for float32 weights or a level without packed kernels); part of buffer_bytes.
    static size_t packed_q8_size(const ModelConfig& c, int group_size);
    // Bytes of the greedy classifier sketch a float32 model of this shape makes (0: none).
    static size_t sketch_size(const ModelConfig& c, long sketch_min_vocab);
    // Whether a model's weights are too big for the caches (float32 only: int8 products have one
    // access pattern), so that products stream them from DRAM.
    static bool streams(const ModelConfig& c, int group_size);
    // Bytes of the copy of a streamed float32 model's matrices on transparent huge pages (0: none;
    // shared: the classifier is the token embedding, copied once).
    static size_t float_copy_size(const ModelConfig& c, int group_size, bool shared);
    // After a greedy step only the chosen ids' logits are sure to be current: compute the rest
    // (last_logits() calls this; a no-op when the logits are whole).
    void complete_logits();
    bool has_sketch() const { return sketch_.gs > 0; }
    long exact_logits() const { return exact_logits_; }  // computed exactly by the last greedy step

private:
    // Rows r = b * Tc + t (b < B, t < Tc): tok_, seq_, posv_ filled by forward().
    void run_chunk(int B, int Tc, int T, int t0, LogitsMode mode, float* out, double* prof);
    // The inputs of int8 products (Q8_0 layers, or the greedy sketch), called by every thread of the
    // region: rows of x (rows <= q_rows_, n <= qn_) quantized in groups of gs. Below
    // SHARED_QUANTIZE_ROWS rows each thread quantizes all of them into its own buffers (no barrier,
    // each thread reads only what it wrote); from there the team shares the work (one barrier).
    QRows quantize_rows(const float* x, long ldx, int rows, int n, int gs);
    static constexpr int SHARED_QUANTIZE_ROWS = 16;
    struct Cls {          // the classifier's rows for a chunk
        float* out;       // (rows, vocab) destination, null for LOGITS_NONE
        const float* in;  // first input row inside x_
        long ldx;         // input row stride
        int rows;
    };
    void prepare_q8_weights();  // Q8_0: turned scales (and packed values) for every matrix
    void copy_float_weights();  // streamed float32 matrices onto huge pages (float_copy_), when asked
    void prepare_sketch();      // float32: the classifier's int8 sketch and its bound terms
    // The greedy classifier, called by every thread of the region: in (rows, ldx) normed rows,
    // out (rows, vocab) gets the logits of the rows the bounds cannot rule out; part_ the argmax.
    void argmax_classifier(const float* in, long ldx, int rows, float* out);
    Cls classifier_io(int B, int Tc, int T, LogitsMode mode, float* out);
    void copy_all_logits(const Cls& cls, int B, int Tc, int T, int t0, float* out);

    long sketch_min_vocab_;  // (before c_: initialized first, as listed)
    ModelConfig c_;
    WeightPtrs w_;
    const KernelTable* kt_;            // the instruction-set level chosen when the model was made
    bool stream_ = false;              // weights too big for the caches: streaming GEMV
    int max_batch_, n_threads_, cap_;  // cap_ = rows the buffers hold = max(max_batch, PREFILL_ROWS)
    // Per-thread results of max_batch rows (part_, lower_) lie slot_stride_ = max_batch + 16 rows
    // apart: at least 64 bytes between two threads' entries, so no cache line holds both. (Adjacent
    // entries made the greedy epilogue's per-block write move one line between the two cores at every
    // block: 27% of a batch-1 int8 step's samples.)
    int slot_stride_;
    Best* part_of(int t) { return part_.data() + (long)t * slot_stride_; }     // thread t's (max_batch,)
    float* lower_of(int t) { return lower_.data() + (long)t * slot_stride_; }  // thread t's (max_batch,)
    // Adaptive team (threads not given): a parallel region runs n_threads_ or 1 thread, whichever
    // has been faster per row lately (results are the same bits either way). On a busy machine a
    // team waits at every barrier for a member that lost its core; one thread has no barriers.
    struct TeamChooser {
        bool adaptive = false;
        bool warmed = false;          // the model's first call (page faults, cold caches) ran, unrecorded
        double recent[2][2][3] = {};  // [decode (T == 1) or prefill][1 thread, full team] last 3 s/row, 0: none
        int taken[2][2] = {};         // samples recorded per [kind][choice]
        // per kind (decode steps and prefill calls keep their own schedule: a rare prefill must not
        // lose its probes to the decode steps between): calls, the call of the next probe of the
        // other choice, calls between probes, the last choice that won
        long calls[2] = {0, 0}, next_probe[2] = {16, 16}, interval[2] = {16, 16};
        int opening = -1;  // the choice of a kind until one of its calls is timed: the model's first call's
        int last_best[2] = {1, 1};
        double estimate(int kind, int choice) const;  // the least recent sample: hiccups only slow runs down
        int pick(int kind);                           // 0: one thread, 1: the full team
        void record(int kind, int choice, double seconds_per_row);
    } team_chooser_;
    int team_;                       // threads of the current parallel regions
    HugeArray<float> key_cache_;     // (n_layers, max_batch, seq_len, kv_dim)
    HugeArray<float> value_cache_;   // (n_layers, max_batch, seq_len, kv_dim)
    std::vector<float> rope_;        // (seq_len, head_size/2, 2) cos, sin
    std::vector<float> x_;           // (cap, dim) residual stream
    std::vector<float> xbt_;         // (n_threads, cap, dim) per-thread normed input
    int qn_ = 0;                     // longest quantized row: max(dim, hidden_dim) for Q8_0, dim for the sketch
    int q_rows_ = 0;                 // quantized rows per thread: cap for Q8_0, max_batch for the sketch
    std::vector<int8_t> xq_;         // (n_threads, q_rows, qn) per-thread quantized input rows
    std::vector<float> xqs_;         // (n_threads, q_rows, groups(qn)) their scales
    std::vector<float> q_;           // (cap, dim) queries
    std::vector<float> k_;           // (cap, kv_dim) new keys (before they go to the cache)
    std::vector<float> v_;           // (cap, kv_dim) new values
    std::vector<float> att_;         // (cap, dim) attention output, heads concatenated
    std::vector<float> tmp_;         // (cap, dim) projection output before the residual add
    std::vector<float> hb_;          // (cap, hidden_dim) w1 x, then silu(w1 x) * w3 x
    std::vector<float> hb2_;         // (cap, hidden_dim) w3 x
    std::vector<float> scores_;      // (n_threads, n_heads, seq_len) attention scores per thread
    std::vector<int> tok_;           // (cap,) token of each row
    std::vector<int> seq_;           // (cap,) KV slot of each row
    std::vector<int> posv_;          // (cap,) position of each row
    std::vector<float> logits_;      // (max_batch, vocab) logits of the last step
    std::vector<float> logits_all_;  // (cap, vocab) chunk logits for LOGITS_ALL; allocated on use
    std::vector<float> probs_;       // (max_batch, vocab) sampling scratch
    std::vector<float> cand_;        // (max_batch, vocab) top-p running sums
    std::vector<int> idx_;           // (max_batch, vocab) top-p candidate ids
    std::vector<uint64_t> rng_;      // (max_batch,) xorshift64* states
    std::vector<Best> part_;         // (n_threads, slot_stride) per-thread argmax of the classifier rows
    std::vector<int> best_;          // (max_batch,) argmax of the last LOGITS_LAST_ARGMAX or LOGITS_ARGMAX chunk
    bool argmax_ready_ = false;      // best_ belongs to logits_ of the last forward

    // Streamed float32 weights: every matrix and the token embedding copied onto transparent huge
    // pages, w_ pointing at the copy (the caller may drop the file's pages). From 4 KiB pages, which
    // the hardware prefetcher does not cross and each of which takes a TLB entry (two page-table
    // walks in a VM), 2-core Zen 4 VM, ms a step, medians of 5 alternated rounds from load 0.27:
    // stories15M sampled batch 1 1.74 -> 1.33, batch 32 8.09 -> 7.39; stories110M greedy 12.0 -> 10.5.
    HugeArray<float> float_copy_;       // (products' d * n summed, + vocab * dim unless shared)
    std::vector<float> scales_turned_;  // Q8_0: every product's QMat::st, (d / 8, groups, 8) each
    HugeArray<uint8_t> packed_;         // Q8_0 at a packed level: every QMat::packed, (d / 16, groups, gs / 4, 16, 4)
    std::vector<float> scales_packed_;  // their QMat::st16, (d / 16, groups, 16) each
    std::vector<int32_t> xqsum_;        // (n_threads, q_rows, groups(qn)) group sums of xq_ (packed kernels)

    // Greedy decoding on float32 weights reads an int8 sketch of the classifier (Q8_0 groups of gs)
    // instead of the float32 one: each logit's sketch value a, with a bound m on |exact - a| from
    // the quantization steps and float rounding, rules out every id whose a + m is below the best
    // a - m; only the others get their exact float32 logit (the same bits as the full product).
    // The argmax is therefore exactly the full product's, from about a quarter of the bytes.
    struct Sketch {
        int gs = 0;                       // 0: no sketch (int8 weights, or an unfit shape)
        std::vector<int8_t> q;            // (vocab, dim) int8 values of wcls
        std::vector<float> s;             // (vocab * dim / gs,) their scales
        std::vector<float> s_max;         // (vocab,) the largest scale of each row
        std::vector<float> l1;            // (vocab,) sum |w_i| + dim * s_max_i / 2
        std::vector<float> turned, st16;  // QMat::st, QMat::st16
        HugeArray<uint8_t> packed;        // QMat::packed (levels with packed kernels)
        Matrix m;                         // the sketch as a Q8_0 matrix
    } sketch_;
    std::vector<float> sketch_stats_;  // (n_threads, max_batch, 3) sum |x|, max |x|, max x scale
    std::vector<float> approx_;        // (max_batch, vocab) sketch logits
    std::vector<float> lower_;         // (n_threads, slot_stride) each thread's best a - m
    std::vector<float> cls_x_;         // (max_batch, dim) the normed rows of the last greedy step
    int cls_rows_ = 0;                 // rows of cls_x_
    bool logits_partial_ = false;      // logits_ holds only what the last greedy step needed
    long exact_logits_ = 0;            // ids the last greedy step could not rule out (all rows)
};

}  // namespace l2p
