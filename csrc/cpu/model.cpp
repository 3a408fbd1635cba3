// The CPU forward pass (docs/FORMAT.md, "Forward pass"), one OpenMP parallel region per chunk.
#include "model.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#ifdef __linux__
#include <unistd.h>
#endif

#include "kernels.h"

namespace l2p {

ModelCore::ModelCore(const ModelConfig& c, const WeightPtrs& w, int max_batch, int n_threads, long sketch_min_vocab,
                     bool copy_weights)
    : sketch_min_vocab_(sketch_min_vocab),
      c_(c),
      w_(w),
      kt_(&kernels()),
      max_batch_(max_batch),
      n_threads_(n_threads > 0 ? n_threads : omp_get_max_threads()),
      cap_(std::max(max_batch, PREFILL_ROWS)),
      slot_stride_(max_batch + 16) {
    team_ = n_threads_;
    team_chooser_.adaptive = n_threads <= 0 && n_threads_ > 1;
    if (n_threads_ > 1) {  // start the team's threads now, not inside the first timed call
#pragma omp parallel num_threads(team_size(n_threads_))
        {
        }
    }
    stream_ = streams(c, w.group_size);
    if (copy_weights) copy_float_weights();
    prepare_q8_weights();
    prepare_sketch();
    const long kv = c.kv_dim();
    const long cache = (long)c.n_layers * max_batch * c.seq_len * kv;
    key_cache_.reset(cache);
    value_cache_.reset(cache);
    rope_.resize((long)c.seq_len * c.head_size());
    rope_table(rope_.data(), c.seq_len, c.head_size());
    x_.resize((long)cap_ * c.dim);
    xbt_.resize((long)n_threads_ * cap_ * c.dim);
    if (w.group_size || sketch_.gs) {  // the int8 products' inputs: every layer's, or the sketch's
        qn_ = w.group_size ? std::max(c.dim, c.hidden_dim) : c.dim;
        q_rows_ = w.group_size ? cap_ : max_batch;
        xq_.resize((long)n_threads_ * q_rows_ * qn_);
        xqs_.resize((long)n_threads_ * q_rows_ * q8_groups(qn_, w.group_size ? w.group_size : sketch_.gs));
        if (kt_->q8_packed) xqsum_.resize(xqs_.size());
    }
    if (sketch_.gs) {
        sketch_stats_.resize((long)n_threads_ * max_batch * 3);
        approx_.resize((long)max_batch * c.vocab_size);
        lower_.resize((long)n_threads_ * slot_stride_);
        cls_x_.resize((long)max_batch * c.dim);
    }
    q_.resize((long)cap_ * c.dim);
    k_.resize(cap_ * kv);
    v_.resize(cap_ * kv);
    att_.resize((long)cap_ * c.dim);
    tmp_.resize((long)cap_ * c.dim);
    hb_.resize((long)cap_ * c.hidden_dim);
    hb2_.resize((long)cap_ * c.hidden_dim);
    scores_.resize((long)n_threads_ * c.n_heads * c.seq_len);
    tok_.resize(cap_);
    seq_.resize(cap_);
    posv_.resize(cap_);
    logits_.resize((long)max_batch * c.vocab_size);
    probs_.resize((long)max_batch * c.vocab_size);
    cand_.resize((long)max_batch * c.vocab_size);
    idx_.resize((long)max_batch * c.vocab_size);
    rng_.assign(max_batch, 0);
    part_.resize((long)n_threads_ * slot_stride_);
    best_.resize(max_batch);
}

// Q8_0 products read the copies prepare_q8 makes (kernels.h, q8_extras), once here for the layers and
// the classifier: at a level with packed kernels (VNNI) the values in the 16-row packed layout
// (QMat::packed, the same number of bytes), the borrowed values then read only for rows outside
// whole blocks; the scales of 8-row blocks turned (QMat::st, as many floats as the scales:
// 4/group_size of the values' bytes) where such rows remain.
namespace {
struct Product {
    Matrix* m;  // null when only the shapes are wanted
    long d, n;
};
// Every weight matrix a forward pass multiplies by, with its shape (d, n).
std::vector<Product> products(const ModelConfig& c, WeightPtrs* w) {
    const long D = c.dim, H = c.hidden_dim, KV = c.kv_dim(), V = c.vocab_size;
    std::vector<Product> parts;
    for (int l = 0; l < c.n_layers; ++l) {
        parts.push_back({w ? &w->wq[l] : nullptr, D, D});
        parts.push_back({w ? &w->wk[l] : nullptr, KV, D});
        parts.push_back({w ? &w->wv[l] : nullptr, KV, D});
        parts.push_back({w ? &w->wo[l] : nullptr, D, D});
        parts.push_back({w ? &w->w1[l] : nullptr, H, D});
        parts.push_back({w ? &w->w2[l] : nullptr, D, H});
        parts.push_back({w ? &w->w3[l] : nullptr, H, D});
    }
    parts.push_back({w ? &w->wcls : nullptr, V, D});
    return parts;
}
}  // namespace

// Weights of every product (the layers' matrices and the classifier), in elements.
static size_t product_elements(const ModelConfig& c) {
    size_t n = 0;
    for (const Product& p : products(c, nullptr)) n += (size_t)p.d * p.n;
    return n;
}

bool ModelCore::streams(const ModelConfig& c, int group_size) {
    return !group_size && sizeof(float) * product_elements(c) > (size_t)STREAM_BYTES;
}

size_t ModelCore::float_copy_size(const ModelConfig& c, int group_size, bool shared) {
    if (!streams(c, group_size) || !huge_pages_available()) return 0;
    return sizeof(float) * (product_elements(c) + (shared ? 0 : (size_t)c.vocab_size * c.dim));
}

void ModelCore::copy_float_weights() {
    const bool shared = w_.token_embedding.f == w_.wcls.f;
    const size_t bytes = float_copy_size(c_, w_.group_size, shared);
    if (!bytes) return;
    float_copy_.reset(bytes / sizeof(float), false);  // every element written below
    float* at = float_copy_.data();
    auto copy = [&at](Matrix& m, size_t n) {
        std::memcpy(at, m.f, n * sizeof(float));
        m.f = at;
        at += n;
    };
    for (const Product& p : products(c_, &w_)) copy(*p.m, (size_t)p.d * p.n);
    if (shared)
        w_.token_embedding.f = w_.wcls.f;
    else
        copy(w_.token_embedding, (size_t)c_.vocab_size * c_.dim);
}

size_t ModelCore::packed_q8_size(const ModelConfig& c, int gs) {
    size_t bytes = 0;
    if (gs <= 0 || !kernels().q8_packed) return 0;
    for (const Product& p : products(c, nullptr)) {
        const Q8Extras e = q8_extras(p.d, p.n, gs, true);
        bytes += e.packed + sizeof(float) * e.packed_scales;
    }
    return bytes;
}

void ModelCore::prepare_q8_weights() {
    const int gs = w_.group_size;
    if (!gs) return;
    const std::vector<Product> parts = products(c_, &w_);
    const bool pack = kt_->q8_packed;
    std::vector<Q8Extras> extras;  // (parts,) what each product needs, summed to size the buffers
    Q8Extras total;
    for (const Product& p : parts) {
        extras.push_back(q8_extras(p.d, p.n, gs, pack));
        total.turned += extras.back().turned;
        total.packed += extras.back().packed;
        total.packed_scales += extras.back().packed_scales;
    }
    scales_turned_.resize(total.turned);
    packed_.reset(total.packed, false);  // every byte written by pack_q8 below
    scales_packed_.resize(total.packed_scales);
    long at_turned = 0, at_packed = 0, at_scales = 0;
    for (size_t i = 0; i < parts.size(); ++i) {
        const Product& p = parts[i];
        const Q8Extras& e = extras[i];
        prepare_q8(p.m->q, p.d, p.n, gs, pack, scales_turned_.data() + at_turned, packed_.data() + at_packed,
                   scales_packed_.data() + at_scales);
        at_turned += e.turned;
        at_packed += e.packed;
        at_scales += e.packed_scales;
    }
}

// The sketch's group size: the largest of 64, 32, 16, 8, 4 that divides dim (0: none fits).
static int sketch_group(const ModelConfig& c) {
    for (int gs = 64; gs >= 4; gs /= 2)
        if (c.dim % gs == 0) return gs;
    return 0;
}

size_t ModelCore::sketch_size(const ModelConfig& c, long sketch_min_vocab) {
    const int gs = sketch_group(c);
    if (!gs || c.vocab_size < sketch_min_vocab) return 0;
    const long V = c.vocab_size, D = c.dim;
    const Q8Extras e = q8_extras(V, D, gs, kernels().q8_packed);
    size_t bytes = sizeof(float) * 2 * V + e.bytes();  // s_max, l1, the copies
    if (!e.all_packed)  // the int8 values and scales, read where rows are outside packed blocks
        bytes += V * D + sizeof(float) * (V * D / gs);
    return bytes;  // (and per-thread buffers of a few rows, counted by buffer_bytes)
}

void ModelCore::prepare_sketch() {
    if (w_.group_size || !sketch_size(c_, sketch_min_vocab_)) return;
    const int gs = sketch_group(c_);
    const long V = c_.vocab_size, D = c_.dim, G = D / gs;
    const float* w = w_.wcls.f;
    // Non-finite weights: no sketch (the full product keeps its own NaN semantics).
    bool finite = true;
#pragma omp parallel for num_threads(team_size(n_threads_)) reduction(&& : finite) schedule(static)
    for (long i = 0; i < V * D; ++i) finite = finite && std::isfinite(w[i]);
    if (!finite) return;
    Sketch& k = sketch_;
    k.q.resize(V * D);
    k.s.resize(V * G);
    k.s_max.resize(V);
    k.l1.resize(V);
#pragma omp parallel for num_threads(team_size(n_threads_)) schedule(static)
    for (long i = 0; i < V; ++i) {
        kt_->quantize_row(k.q.data() + i * D, k.s.data() + i * G, w + i * D, (int)D, gs);  // runq's, per group
        float s_max = 0.f;
        double l1 = 0.0;
        for (long g = 0; g < G; ++g) {
            const float* wg = w + i * D + g * gs;
            float amax = 0.f;
            for (int j = 0; j < gs; ++j) {
                amax = std::max(amax, std::fabs(wg[j]));
                l1 += std::fabs(wg[j]);
            }
            // a scale too small to divide by safely: no bound for this row, it is always computed
            s_max = amax > 0.f && k.s[i * G + g] < 1e-30f ? INFINITY : std::max(s_max, k.s[i * G + g]);
        }
        k.s_max[i] = s_max;
        k.l1[i] = (float)(l1 * (1.0 + 1e-6)) + 0.5f * (float)D * s_max;  // >= sum |q * scale|
    }
    k.m.q.q = k.q.data();
    k.m.q.s = k.s.data();
    const Q8Extras e = q8_extras(V, D, gs, kt_->q8_packed);
    k.turned.resize(e.turned);
    k.packed.reset(e.packed, false);  // every byte written by pack_q8
    k.st16.resize(e.packed_scales);
    prepare_q8(k.m.q, V, D, gs, kt_->q8_packed, k.turned.data(), k.packed.data(), k.st16.data());
    if (e.all_packed) {  // the unpacked copy is never read
        std::vector<int8_t>().swap(k.q);
        std::vector<float>().swap(k.s);
        k.m.q.q = nullptr;
        k.m.q.s = nullptr;
    }
    k.gs = gs;
}

size_t ModelCore::buffer_bytes() const {
    size_t f = scales_turned_.size() + scales_packed_.size() + xqsum_.size() + key_cache_.size() + value_cache_.size() +
               rope_.size() + x_.size() + xqs_.size() + xbt_.size() + q_.size() + k_.size() + v_.size() + att_.size() +
               tmp_.size() + hb_.size() + hb2_.size() + scores_.size() + logits_.size() + logits_all_.size() +
               probs_.size() + cand_.size();
    size_t i = tok_.size() + seq_.size() + posv_.size() + idx_.size();
    const size_t sketch =
        sketch_.q.size() + sketch_.packed.size() +
        sizeof(float) * (sketch_.s.size() + sketch_.s_max.size() + sketch_.l1.size() + sketch_.turned.size() +
                         sketch_.st16.size() + sketch_stats_.size() + approx_.size() + lower_.size() + cls_x_.size());
    return (f + float_copy_.size()) * sizeof(float) + i * sizeof(int) + rng_.size() * sizeof(uint64_t) + xq_.size() +
           packed_.size() + sketch;
}

namespace {
using Clock = std::chrono::steady_clock;

// Per-category timing inside the parallel region, without barriers of its own: the master thread
// books the time since its previous mark. Marks sit right after the pass's work-sharing loops (whose
// implied barriers make the master's clock everyone's) or after work every thread does alike.
struct Profiler {
    double* acc;  // (P_COUNT,) or null: not profiling
    Clock::time_point last;
    void mark(int cat) {
        if (!acc || omp_get_thread_num() != 0) return;
        const auto now = Clock::now();
        acc[cat] += std::chrono::duration<double>(now - last).count();
        last = now;
    }
};
}  // namespace

double ModelCore::TeamChooser::estimate(int kind, int choice) const {
    double best = 0;
    for (int i = 0; i < std::min(taken[kind][choice], 3); ++i)
        if (best == 0 || recent[kind][choice][i] < best) best = recent[kind][choice][i];
    return best;
}

const char* loadavg_path() {
    static const std::string path = [] {
        const char* env = std::getenv("LLAMA2PY_LOADAVG");
        return std::string(env && *env ? env : "/proc/loadavg");
    }();
    return path.c_str();
}

// More threads ready to run than the machine has processors (Linux: /proc/loadavg's count of
// runnable threads, ours included, team mates still spinning counted too): a full team would wait
// at every barrier for a member without a core. False where it cannot tell.
static bool cores_taken() {
#ifdef __linux__
    FILE* f = std::fopen(loadavg_path(), "r");
    if (!f) return false;
    double one_min, five_min, fifteen_min;
    int running = 0, total = 0;
    const int got = std::fscanf(f, "%lf %lf %lf %d/%d", &one_min, &five_min, &fifteen_min, &running, &total);
    std::fclose(f);
    // the machine's processors, not this process's affinity: /proc/loadavg counts the whole host
    return got == 5 && running > sysconf(_SC_NPROCESSORS_ONLN);
#else
    return false;
#endif
}

int ModelCore::TeamChooser::pick(int kind) {
    if (!adaptive) return 1;
    const long call = ++calls[kind];
    const double one = estimate(kind, 0), full = estimate(kind, 1);
    // Nothing timed yet for this kind (the model's first call is never timed): the team, unless
    // every processor is taken; then one thread is timed first. Asked once, at the model's first
    // call: at a later one (the second, or the first step after a prefill) the team mates of the
    // call before may still spin, counted as runnable; that call then ran one thread, and so did
    // the 14 after it until the first probe (5% of a stories15M fp32 -n 256 story on 2 cores).
    if (one == 0 && full == 0) {
        if (opening < 0) opening = cores_taken() ? 0 : 1;
        return opening;
    }
    if (one == 0) return 0;
    const int best = full == 0 || one < full ? 0 : 1;
    if (call < next_probe[kind]) return best;
    // Now and then time the other choice again (the load changes): the longer one choice keeps
    // winning, the rarer (16 calls, doubling up to 512), and a probe that lost by a factor r waits
    // at least 32 * (r - 1) calls, so losing probes cost at most about 3% (on a busy machine the full
    // team can be 10x slower than one thread: its barriers wait for members that lost their core).
    // The team is not tried at all while the machine has more runnable threads than processors.
    long& gap = interval[kind];
    if (best == 0 && cores_taken()) {
        gap = std::max(gap, std::min(2 * gap, 512L));
        next_probe[kind] = call + gap;
        return 0;
    }
    if (full != 0) {
        const double ratio = best ? one / full : full / one;
        gap = best == last_best[kind] ? std::max(gap, std::min(2 * gap, 512L)) : 16;
        gap = std::max(gap, (long)std::min(32.0 * (ratio - 1.0), 4096.0));
    }
    last_best[kind] = best;
    next_probe[kind] = call + gap;
    return 1 - best;
}

void ModelCore::TeamChooser::record(int kind, int choice, double seconds_per_row) {
    // The model's first call pays one-time costs (page faults, cold caches): not a sample. Later
    // ones fill a ring of 3 per choice whose least value is the estimate, so one slow call (a
    // preempted thread on a quiet machine) cannot keep the full team out, and a lasting change of
    // load shows within 3 samples.
    if (!warmed) {
        warmed = true;
        return;
    }
    recent[kind][choice][taken[kind][choice]++ % 3] = seconds_per_row;
}

void ModelCore::forward(const int* tokens, int B, int T, int pos, LogitsMode mode, float* out, double* prof) {
    const int kind = T == 1 ? 0 : 1;
    const int choice = team_chooser_.pick(kind);
    team_ = choice ? n_threads_ : 1;
    const auto started = Clock::now();
    // Chunks of Tc positions for all B sequences: B * Tc <= cap_ rows.
    const int Tc = std::max(1, std::min(T, cap_ / B));
    for (int t0 = 0; t0 < T; t0 += Tc) {
        const int n = std::min(Tc, T - t0);
        for (int b = 0; b < B; ++b)
            for (int t = 0; t < n; ++t) {
                const int r = b * n + t;
                tok_[r] = tokens[(long)b * T + t0 + t];
                seq_[r] = b;
                posv_[r] = pos + t0 + t;
            }
        const bool last_chunk = t0 + n == T;
        const LogitsMode m = mode == LOGITS_ALL || (last_rows(mode) && last_chunk) ? mode : LOGITS_NONE;
        run_chunk(B, n, T, t0, m, out, prof);
    }
    if (team_chooser_.adaptive)
        team_chooser_.record(kind, choice, std::chrono::duration<double>(Clock::now() - started).count() / (B * T));
}

ModelCore::Cls ModelCore::classifier_io(int B, int Tc, int T, LogitsMode mode, float* out) {
    Cls cls{nullptr, x_.data(), (long)c_.dim, 0};
    if (last_rows(mode)) {  // row (b, Tc - 1) of each sequence
        cls.out = out;
        cls.in = x_.data() + (long)(Tc - 1) * c_.dim;
        cls.ldx = (long)Tc * c_.dim;
        cls.rows = B;
    } else if (mode == LOGITS_ALL) {
        cls.rows = B * Tc;
        if (Tc == T) {
            cls.out = out;  // rows b * T + t are exactly out's (B, T) rows
        } else {
            const size_t need = (size_t)cap_ * c_.vocab_size;
            if (logits_all_.size() < need) logits_all_.resize(need);
            cls.out = logits_all_.data();
        }
    }
    return cls;
}

void ModelCore::copy_all_logits(const Cls& cls, int B, int Tc, int T, int t0, float* out) {
    const long V = c_.vocab_size;
    if (cls.out && cls.out != out && cls.rows == B * Tc)
        for (int b = 0; b < B; ++b)
            std::memcpy(out + ((long)b * T + t0) * V, cls.out + (long)b * Tc * V, (size_t)Tc * V * sizeof(float));
}

namespace {
// Fused epilogues: work that runs right after the product block that produces its inputs.
// RoPE on the block's features of every row; for keys and values also the store into the cache.
struct RopeStore : Epilogue {
    float* vec;  // (rows, n) q or k or v
    int n, rows, hs, seq_len;
    bool rotate;
    float* cache;          // (max_batch, seq_len, n) this layer's k or v cache, or null
    const int *seq, *pos;  // (rows,)
    const float* rope;     // (seq_len, hs/2, 2)
    RopeStore(float* vec, int n, int rows, int hs, int seq_len, bool rotate, float* cache, const int* seq,
              const int* pos, const float* rope)
        : vec(vec),
          n(n),
          rows(rows),
          hs(hs),
          seq_len(seq_len),
          rotate(rotate),
          cache(cache),
          seq(seq),
          pos(pos),
          rope(rope) {}
    void run(int r0, int nr) const override {
        for (int r = 0; r < rows; ++r) {
            float* v = vec + (long)r * n;
            if (rotate) rope_span(v, r0, r0 + nr, hs, rope + (long)pos[r] * hs);
            if (cache) std::memcpy(cache + ((long)seq[r] * seq_len + pos[r]) * n + r0, v + r0, nr * sizeof(float));
        }
    }
};
// x[:, block] += y[:, block]
struct Residual : Epilogue {
    float* x;
    const float* y;
    int n, rows;
    Residual(float* x, const float* y, int n, int rows) : x(x), y(y), n(n), rows(rows) {}
    void run(int r0, int nr) const override {
        for (int r = 0; r < rows; ++r)
            for (int i = r0; i < r0 + nr; ++i) x[(long)r * n + i] += y[(long)r * n + i];
    }
};
// h[:, block] = silu(h) * g
struct SwiGLU : Epilogue {
    float* h;
    const float* g;
    int n, rows;
    SwiGLU(float* h, const float* g, int n, int rows) : h(h), g(g), n(n), rows(rows) {}
    void run(int r0, int nr) const override {
        for (int r = 0; r < rows; ++r)
            for (int i = r0; i < r0 + nr; ++i) h[(long)r * n + i] = silu_mul(h[(long)r * n + i], g[(long)r * n + i]);
    }
};
}  // namespace

// Per-thread running argmax over the classifier blocks this thread computed (first index on ties
// inside a thread: blocks come in increasing order).
struct Argmax : Epilogue {
    const float* logits;  // (rows, V)
    int V, rows;
    ModelCore::Best* part;  // (rows,) this thread's partial results
    Argmax(const float* logits, int V, int rows, ModelCore::Best* part)
        : logits(logits), V(V), rows(rows), part(part) {}
    // The same result as `if (b.i < 0 || lg[i] > b.v) b = {lg[i], i}` over i in order (the first
    // index of the largest value above the running best; NaN never wins after the first), from the
    // block's maximum in four independent chains (the one chain of compares was a third of a batch-1
    // int8 step's classifier), then a search for its first index only where it beats the best.
    void run(int r0, int nr) const override {
        for (int r = 0; r < rows; ++r) {
            const float* lg = logits + (long)r * V;
            ModelCore::Best b = part[r];
            int i = r0;
            if (b.i < 0 && nr > 0) b = {lg[i], i}, ++i;
            float m[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
            int k = i;
            for (; k + 4 <= r0 + nr; k += 4)
                for (int j = 0; j < 4; ++j) m[j] = lg[k + j] > m[j] ? lg[k + j] : m[j];
            for (; k < r0 + nr; ++k) m[0] = lg[k] > m[0] ? lg[k] : m[0];
            const float top = std::max(std::max(m[0], m[1]), std::max(m[2], m[3]));  // no NaN here
            if (top > b.v)
                for (; i < r0 + nr; ++i)
                    if (lg[i] == top) {
                        b = {lg[i], i};
                        break;
                    }
            part[r] = b;
        }
    }
};

QRows ModelCore::quantize_rows(const float* x, long ldx, int rows, int n, int gs) {
    const long lds = q8_groups(qn_, gs);
    // Many rows: the team splits them into thread 0's buffers (one barrier, at the loop's end)
    // rather than every thread quantizing all of them (prefill chunks of 128 rows: ~1 ms of each
    // ~10 ms chunk per thread). Few rows: no barrier, each thread its own copy.
    const bool shared = rows >= SHARED_QUANTIZE_ROWS && omp_get_num_threads() > 1;
    const int t = shared ? 0 : omp_get_thread_num();
    int32_t* sum = xqsum_.empty() ? nullptr : xqsum_.data() + (long)t * q_rows_ * lds;
    QRows q{xq_.data() + (long)t * q_rows_ * qn_, xqs_.data() + (long)t * q_rows_ * lds, qn_, lds, gs, sum};
    auto one = [&](int r) {
        int8_t* qr = const_cast<int8_t*>(q.q) + r * q.ldq;
        kt_->quantize_row(qr, const_cast<float*>(q.s) + r * q.lds, x + r * ldx, n, gs);
        if (sum) q8_group_sums(sum + r * lds, qr, n, gs);
    };
    if (shared) {
#pragma omp for schedule(static)
        for (int r = 0; r < rows; ++r) one(r);
    } else {
        for (int r = 0; r < rows; ++r) one(r);
    }
    return q;
}

// The decode/prefill path: 5 barriers per layer. The norms (and for Q8_0 the quantized inputs of
// fewer than SHARED_QUANTIZE_ROWS rows) are computed redundantly by every thread into its own buffer
// (no barrier; more rows are quantized once by the team, one barrier per product); RoPE, the cache
// stores, the residual adds and SwiGLU run as epilogues of the products that produce their inputs.
void ModelCore::run_chunk(int B, int Tc, int T, int t0, LogitsMode mode, float* out, double* prof) {
    const ModelConfig& c = c_;
    const KernelTable& kern = *kt_;
    const int rows = B * Tc;
    const int dim = c.dim, hid = c.hidden_dim, hs = c.head_size(), kv = c.kv_dim(), V = c.vocab_size;
    const long cache_layer = (long)max_batch_ * c.seq_len * kv;
    const bool q8 = w_.group_size > 0;
    const Cls cls = classifier_io(B, Tc, T, mode, out);
    // OpenMP may run a smaller team than asked (OMP_THREAD_LIMIT, OMP_DYNAMIC): slots of threads that
    // never ran must not look like candidates when the partial argmaxes are combined.
    std::fill(part_.begin(), part_.end(), Best{0.f, -1});
    if (mode == LOGITS_ARGMAX) exact_logits_ = 0;  // the threads add their counts

#pragma omp parallel num_threads(team_size(team_))
    {
        Profiler timer{prof, Clock::now()};
        float* xb = xbt_.data() + (long)omp_get_thread_num() * cap_ * dim;  // (cap, dim) this thread's normed x
        // Q8_0 inputs of a product (quantize_rows; null for float32 weights)
        auto quantized = [&](const float* x, long ldx, int n_rows, int n, QRows& q) -> const QRows* {
            if (!q8) return nullptr;
            q = quantize_rows(x, ldx, n_rows, n, w_.group_size);
            return &q;
        };
        QRows qrows;
#pragma omp for schedule(static)
        for (int r = 0; r < rows; ++r) {
            const int tok = tok_[r];
            float* x = x_.data() + (long)r * dim;
            if (!q8) {
                std::memcpy(x, w_.token_embedding.f + (long)tok * dim, dim * sizeof(float));
            } else {  // dequantize just this row (runq dequantizes the whole table, to the same values)
                const long off = (long)tok * dim;
                for (int i = 0; i < dim; ++i)
                    x[i] = w_.token_embedding.q.q[off + i] * w_.token_embedding.q.s[(off + i) / w_.group_size];
            }
        }
        timer.mark(P_EMBEDDING);

        for (int l = 0; l < c.n_layers; ++l) {
            float* kc = key_cache_.data() + l * cache_layer;
            float* vc = value_cache_.data() + l * cache_layer;
            for (int r = 0; r < rows; ++r)
                kern.rmsnorm_row(xb + (long)r * dim, x_.data() + (long)r * dim, w_.rms_att + (long)l * dim, dim);
            timer.mark(P_RMSNORM);
            const RopeStore rope_q{q_.data(), dim,     rows,        hs,           c.seq_len,
                                   true,      nullptr, seq_.data(), posv_.data(), rope_.data()};
            const RopeStore rope_k{k_.data(), kv, rows,        hs,           c.seq_len,
                                   true,      kc, seq_.data(), posv_.data(), rope_.data()};
            const RopeStore store_v{v_.data(), kv, rows,        hs,           c.seq_len,
                                    false,     vc, seq_.data(), posv_.data(), rope_.data()};
            MatJob qkv[3] = {
                {w_.wq[l], dim, q_.data(), dim},
                {w_.wk[l], kv, k_.data(), kv},
                {w_.wv[l], kv, v_.data(), kv},
            };
            qkv[0].epi = &rope_q;
            qkv[1].epi = &rope_k;
            qkv[2].epi = &store_v;
            kern.matmul_jobs(qkv, 3, xb, dim, rows, dim, stream_, quantized(xb, dim, rows, dim, qrows));
            timer.mark(P_MATMUL);
            kern.attention(att_.data(), q_.data(), kc, vc, seq_.data(), posv_.data(), rows, c.n_heads, c.n_kv_heads, hs,
                           c.seq_len, scores_.data());
            timer.mark(P_ATTENTION);
            const Residual add_attn{x_.data(), tmp_.data(), dim, rows};
            MatJob proj{w_.wo[l], dim, tmp_.data(), dim};
            proj.epi = &add_attn;
            kern.matmul_jobs(&proj, 1, att_.data(), dim, rows, dim, stream_,
                             quantized(att_.data(), dim, rows, dim, qrows));
            timer.mark(P_MATMUL);

            for (int r = 0; r < rows; ++r)
                kern.rmsnorm_row(xb + (long)r * dim, x_.data() + (long)r * dim, w_.rms_ffn + (long)l * dim, dim);
            timer.mark(P_RMSNORM);
            const SwiGLU gate{hb_.data(), hb2_.data(), hid, rows};
            MatJob up{w_.w1[l], hid, hb_.data(), hid};
            up.w_gate = w_.w3[l];
            up.out_gate = hb2_.data();
            up.epi = &gate;
            kern.matmul_jobs(&up, 1, xb, dim, rows, dim, stream_, quantized(xb, dim, rows, dim, qrows));
            timer.mark(P_MATMUL);
            const Residual add_ffn{x_.data(), tmp_.data(), dim, rows};
            MatJob down{w_.w2[l], dim, tmp_.data(), dim};
            down.epi = &add_ffn;
            kern.matmul_jobs(&down, 1, hb_.data(), hid, rows, hid, stream_,
                             quantized(hb_.data(), hid, rows, hid, qrows));
            timer.mark(P_MATMUL);
        }
        if (mode != LOGITS_NONE) {
            // every thread normalizes the rows the classifier reads, into its own buffer
            for (int i = 0; i < cls.rows; ++i) {
                const long off = (cls.in - x_.data()) + i * cls.ldx;
                kern.rmsnorm_row(xb + off, x_.data() + off, w_.rms_final, dim);
            }
            timer.mark(P_RMSNORM);
            if (mode == LOGITS_ARGMAX) {
                argmax_classifier(xb + (cls.in - x_.data()), cls.ldx, cls.rows, cls.out);
                timer.mark(P_CLASSIFIER);
            }
        }
        if (mode == LOGITS_LAST || mode == LOGITS_LAST_ARGMAX || mode == LOGITS_ALL) {
            MatJob logits{w_.wcls, V, cls.out, V};
            const Argmax best(cls.out, V, cls.rows, part_of(omp_get_thread_num()));  // (part_ reset above)
            if (mode == LOGITS_LAST_ARGMAX) logits.epi = &best;  // greedy's argmax rides along, split like the rows
            const float* in = xb + (cls.in - x_.data());
            kern.matmul_jobs(&logits, 1, in, cls.ldx, cls.rows, dim, stream_,
                             quantized(in, cls.ldx, cls.rows, dim, qrows));
            timer.mark(P_CLASSIFIER);
        }
    }
    copy_all_logits(cls, B, Tc, T, t0, out);
    argmax_ready_ = mode == LOGITS_LAST_ARGMAX || mode == LOGITS_ARGMAX;
    if (argmax_ready_) {  // combine the threads' partial maxima: larger value, then smaller index
        for (int b = 0; b < cls.rows; ++b) {
            Best best{0.f, -1};
            for (int t = 0; t < n_threads_; ++t) {
                const Best& p = part_of(t)[b];
                if (p.i >= 0 && (best.i < 0 || p.v > best.v || (p.v == best.v && p.i < best.i))) best = p;
            }
            best_[b] = best.i;
        }
    }
}

namespace {
// Sketch bound terms of one input row: sum |x|, max |x| and the largest scale of its quantization.
struct RowStats {
    float l1, amax, t;
};
// After the sketch product of a block: each row's best lower bound a - m over the block, into lower
// (the kernel's sketch_bound: m is the margin of a's rounding errors).
struct SketchBound : Epilogue {
    const KernelTable& kern;
    float* approx;       // (rows, V) sketch logits, turned into their upper bounds
    const float* s_max;  // (V,)
    const float* l1;     // (V,)
    const RowStats* st;  // (rows,)
    float* lower;        // (rows,) this thread's running maxima
    int V, rows;
    float g;  // relative rounding allowance of the two float sums
    SketchBound(const KernelTable& kern, float* approx, const float* s_max, const float* l1, const RowStats* st,
                float* lower, int V, int rows, float g)
        : kern(kern), approx(approx), s_max(s_max), l1(l1), st(st), lower(lower), V(V), rows(rows), g(g) {}
    // Each sketch logit a becomes its upper bound a + m in place (the candidate pass reads that),
    // and the block's best a - m goes into lower.
    void run(int r0, int nr) const override {
        for (int b = 0; b < rows; ++b)
            lower[b] = kern.sketch_bound(approx + (long)b * V + r0, s_max + r0, l1 + r0, nr, st[b].l1, st[b].amax,
                                         st[b].t, g, lower[b]);
    }
};
}  // namespace

void ModelCore::argmax_classifier(const float* in, long ldx, int rows, float* out) {
    const KernelTable& kern = *kt_;
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int D = c_.dim, V = c_.vocab_size, gs = sketch_.gs, G = D / gs;
    // The input rows quantized (quantize_rows) and this thread's copy of their stats.
    const QRows q = quantize_rows(in, ldx, rows, D, gs);
    RowStats* st = reinterpret_cast<RowStats*>(sketch_stats_.data() + (long)t * max_batch_ * 3);
    for (int b = 0; b < rows; ++b) {
        const float* x = in + b * ldx;
        RowStats r{0.f, 0.f, 0.f};
        for (int k = 0; k < D; ++k) {
            r.l1 += std::fabs(x[k]);
            r.amax = std::max(r.amax, std::fabs(x[k]));
        }
        for (int g = 0; g < G; ++g) r.t = std::max(r.t, q.s[b * q.lds + g]);
        // Non-finite input, or one so small that its quantization steps may underflow: every id of
        // this row stays a candidate.
        if (!std::isfinite(r.l1) || r.amax < 1e-30f) r.l1 = NAN;
        st[b] = r;
        lower_of(t)[b] = -INFINITY;  // (part_ was reset before the region)
    }
    // Both float sums round at most once per term (a fused multiply-add, or a multiply then an add
    // at the generic level): 4 (D + G + 2) units in the last place covers them.
    const float g = 4.0f * (float)(D + G + 2) * 5.9604645e-8f;
    MatJob job{sketch_.m, V, approx_.data(), V};
    const SketchBound bound(kern, approx_.data(), sketch_.s_max.data(), sketch_.l1.data(), st, lower_of(t), V, rows, g);
    job.epi = &bound;
    kern.matmul_jobs(&job, 1, nullptr, 0, rows, D, false, &q);  // ends with a barrier
    // Every id whose a + m reaches the best a - m of its row gets its exact logit; the argmax of
    // those is the full product's (same kernel sums, first index on ties within a thread).
    constexpr int BLOCK = 256;
    float best_lower[SKETCH_MAX_ROWS];
    const int nb = std::min(rows, SKETCH_MAX_ROWS);
    for (int b = 0; b < nb; ++b) {
        float m = -INFINITY;
        for (int u = 0; u < nt; ++u) m = std::max(m, lower_of(u)[b]);
        best_lower[b] = m;
    }
    Best* part = part_of(t);
    long exact = 0;
#pragma omp for schedule(static)
    for (int blk = 0; blk < (V + BLOCK - 1) / BLOCK; ++blk) {
        for (int b = 0; b < rows; ++b) {
            const float* upper = approx_.data() + (long)b * V;  // a + m (SketchBound)
            const float floor = b < nb ? best_lower[b] : -INFINITY;
            const float* x = in + b * ldx;
            for (int i = blk * BLOCK; i < std::min(V, (blk + 1) * BLOCK); ++i) {
                if (upper[i] < floor) continue;  // NaN bounds stay candidates
                const float e = kern.dot(w_.wcls.f + (long)i * D, x, D);
                ++exact;
                out[(long)b * V + i] = e;
                if (part[b].i < 0 || e > part[b].v) part[b] = {e, i};
            }
        }
    }
#pragma omp atomic
    exact_logits_ += exact;
    if (t == 0) {  // the rows, for complete_logits()
        for (int b = 0; b < rows; ++b) std::memcpy(cls_x_.data() + (long)b * D, in + b * ldx, D * sizeof(float));
        cls_rows_ = rows;
    }
}

void ModelCore::complete_logits() {
    if (!logits_partial_) return;
    const int D = c_.dim, V = c_.vocab_size;
    MatJob job{w_.wcls, V, logits_.data(), V};
#pragma omp parallel num_threads(team_size(n_threads_))
    kt_->matmul_jobs(&job, 1, cls_x_.data(), D, cls_rows_, D, stream_, nullptr);
    logits_partial_ = false;
}

void ModelCore::step(int* next, float* logprobs, const int* tokens, int B, int pos, double temperature, double top_p,
                     const int* forced, double* prof) {
    // Greedy steps without log-probs need only the argmax: the sketch's bounds (float32 models).
    const bool argmax_only = temperature == 0.0 && !logprobs && sketch_.gs && B <= SKETCH_MAX_ROWS;
    forward(tokens, B, 1, pos,
            argmax_only          ? LOGITS_ARGMAX
            : temperature == 0.0 ? LOGITS_LAST_ARGMAX
                                 : LOGITS_LAST,
            logits_.data(), prof);
    logits_partial_ = argmax_only;
    const auto t0 = Clock::now();
    const int V = c_.vocab_size;
    auto one = [&](int b) {
        const float* lg = logits_.data() + (long)b * V;
        int id;
        if (forced && forced[b] >= 0)
            id = forced[b];
        else if (temperature == 0.0 && argmax_ready_)
            id = best_[b];
        else
            id = sample(*kt_, lg, V, temperature, top_p, &rng_[b], probs_.data() + (long)b * V,
                        idx_.data() + (long)b * V, cand_.data() + (long)b * V);
        next[b] = id;
        if (logprobs) logprobs[b] = (float)log_softmax_at(lg, V, id);
    };
    if (B == 1) {
        one(0);
    } else if (temperature == 0.0) {
#pragma omp parallel for num_threads(team_size(team_)) schedule(static)
        for (int b = 0; b < B; ++b) one(b);
    } else {
        // Sampled rows in fours: their softmax sums run as independent chains (kernels.h, exp_rows).
#pragma omp parallel for num_threads(team_size(team_)) schedule(static)
        for (int g = 0; g < (B + 3) / 4; ++g) {
            float* probs[4];
            const float* lg[4];
            int rows[4], k = 0;
            for (int b = 4 * g; b < std::min(B, 4 * g + 4); ++b) {
                if (forced && forced[b] >= 0) {
                    one(b);
                    continue;
                }
                probs[k] = probs_.data() + (long)b * V;
                lg[k] = logits_.data() + (long)b * V;
                rows[k++] = b;
            }
            float sums[4];
            kt_->exp_rows(probs, lg, k, V, (float)temperature, sums);
            for (int j = 0; j < k; ++j) {
                const int b = rows[j];
                next[b] = sample_exps(probs[j], sums[j], V, top_p, &rng_[b], idx_.data() + (long)b * V,
                                      cand_.data() + (long)b * V);
                if (logprobs) logprobs[b] = (float)log_softmax_at(lg[j], V, next[b]);
            }
        }
    }
    if (prof) prof[P_SAMPLING] += std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace l2p
