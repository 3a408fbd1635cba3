// pybind11 module llama2py._cpu: argument checking at the boundary, then the C++ kernels with the GIL
// released. Outputs come first in every signature. Shape or dtype mistakes raise ValueError
// (std::invalid_argument); nothing prints or exits.
#include <omp.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels.h"
#include "model.h"

namespace py = pybind11;
using l2p::Matrix;
using l2p::ModelConfig;
using l2p::ModelCore;
using l2p::QMat;
using l2p::WeightPtrs;

namespace {

std::string shape_str(const py::array& a) {
    std::ostringstream s;
    s << "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) s << (i ? ", " : "") << a.shape(i);
    s << (a.ndim() == 1 ? ",)" : ")");
    return s.str();
}

std::string shape_str(const std::vector<long>& shape) {
    std::ostringstream s;
    s << "(";
    for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
    s << (shape.size() == 1 ? ",)" : ")");
    return s.str();
}

// A shape entry that accepts any length (a computed size is never this, even when negative).
constexpr long ANY = std::numeric_limits<long>::min();

// Check dtype (native byte order), C-contiguity, shape (ANY = any length) and writability; return
// the checked shape. Lengths above INT_MAX are refused: the kernels take row counts and lengths as int.
template <typename T>
std::vector<long> check(const py::array& a, const char* name, std::vector<long> shape, bool writable) {
    const char* tname = std::is_same<T, float>::value      ? "float32"
                        : std::is_same<T, int32_t>::value  ? "int32"
                        : std::is_same<T, double>::value   ? "float64"
                        : std::is_same<T, int8_t>::value   ? "int8"
                        : std::is_same<T, uint32_t>::value ? "uint32"
                                                           : "uint64";
    // (numpy's equivalent types: np.intc is int32's bytes, a byte-swapped float32 is not)
    if (!py::dtype::of<T>().equal(a.dtype()))
        throw std::invalid_argument(std::string(name) + ": expected a " + tname + " array, got dtype " +
                                    std::string(py::str(a.dtype())));
    if (!(a.flags() & py::array::c_style))
        throw std::invalid_argument(std::string(name) + ": expected a C-contiguous array");
    if (reinterpret_cast<uintptr_t>(a.data()) % alignof(T))
        throw std::invalid_argument(std::string(name) +
                                    ": expected an aligned array (np.require(a, requirements='CA'))");
    if (writable && !a.writeable()) throw std::invalid_argument(std::string(name) + ": output array is read-only");
    bool ok = a.ndim() == (py::ssize_t)shape.size();
    for (size_t i = 0; ok && i < shape.size(); ++i) {
        if (shape[i] == ANY) shape[i] = a.shape(i);
        ok = a.shape(i) == shape[i];
        if (ok && shape[i] > std::numeric_limits<int>::max())
            throw std::invalid_argument(std::string(name) + ": " + std::to_string(shape[i]) +
                                        " is too long for a dimension (at most 2**31 - 1)");
    }
    if (!ok)
        throw std::invalid_argument(std::string(name) + ": expected shape " + shape_str(shape) + ", got " +
                                    shape_str(a));
    return shape;
}

template <typename T>
T* writable_ptr(py::array& a) {
    return static_cast<T*>(a.mutable_data());
}
template <typename T>
const T* data_ptr(const py::array& a) {
    return static_cast<const T*>(a.data());
}

void check_tokens(const int* t, long n, int vocab) {
    for (long i = 0; i < n; ++i)
        if (t[i] < 0 || t[i] >= vocab)
            throw std::invalid_argument("token id " + std::to_string(t[i]) + " outside 0.." +
                                        std::to_string(vocab - 1));
}

// The Python-facing model: checks arguments, keeps the borrowed weight arrays alive, and calls
// ModelCore without the GIL.
// The caller's own ndarray (never a converted temporary, whose buffer would die at the end of
// its scope while the kernel still uses the pointer with the GIL released); the caller owns it.
static py::array as_ndarray(const py::object& o, const char* name) {
    if (!py::isinstance<py::array>(o)) throw std::invalid_argument(std::string(name) + " must be a numpy array");
    return py::reinterpret_borrow<py::array>(o);
}

// The sizes a Model (and the size queries about one) accept.
static ModelConfig checked_config(int dim, int hidden_dim, int n_layers, int n_heads, int n_kv_heads, int vocab_size,
                                  int seq_len, int group_size) {
    if (dim <= 0 || hidden_dim <= 0 || n_layers <= 0 || n_heads <= 0 || n_kv_heads <= 0 || vocab_size <= 0 ||
        seq_len <= 0 || dim % n_heads || n_heads % n_kv_heads || (dim / n_heads) % 2)
        throw std::invalid_argument("inconsistent model config");
    if (group_size < 0) throw std::invalid_argument("group_size must be >= 0 (0 = float32 weights)");
    return ModelConfig{dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len};
}

// The vocabulary size from which a float32 model gets the greedy classifier sketch; read here, with
// the GIL held (LLAMA2PY_SKETCH_MIN_VOCAB lowers it: the tests run trained stories260K through it).
static long sketch_min_vocab() {
    const char* env = std::getenv("LLAMA2PY_SKETCH_MIN_VOCAB");
    return env && *env ? std::max(1L, std::atol(env)) : (long)l2p::ModelCore::SKETCH_MIN_VOCAB;
}

class Model {
public:
    // Matrices: float32 arrays (n_layers, d, n) (or (d, n) for token_embedding and wcls), or with
    // group_size > 0 the Q8_0 parts as checkpoint.QuantizedTensor.parts holds them: a sequence of
    // one (values int8 (d, n), scales float32 (d * n / group_size,)) pair per layer (one for the
    // token embedding and the classifier). Every array is borrowed, never copied, except that with
    // copy_weights a float32 model too big for the caches copies its matrices onto huge pages
    // (float_copy_bytes says how many bytes; the arrays are then not read again).
    Model(int dim, int hidden_dim, int n_layers, int n_heads, int n_kv_heads, int vocab_size, int seq_len,
          int max_batch, int threads, py::object token_embedding, py::array rms_att, py::object wq, py::object wk,
          py::object wv, py::object wo, py::array rms_ffn, py::object w1, py::object w2, py::object w3,
          py::array rms_final, py::object wcls, int group_size, bool copy_weights) {
        const ModelConfig c =
            checked_config(dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len, group_size);
        if (max_batch < 1) throw std::invalid_argument("max_batch must be >= 1");
        if (threads < 0) throw std::invalid_argument("threads must be >= 0 (0 = OpenMP default)");
        const long L = n_layers, D = dim, H = hidden_dim, KV = c.kv_dim(), V = vocab_size;
        WeightPtrs w;
        w.group_size = group_size;
        w.token_embedding = matrices(token_embedding, "token_embedding", 0, V, D, group_size)[0];
        check<float>(rms_att, "rms_att", {L, D}, false);
        w.wq = matrices(wq, "wq", L, D, D, group_size);
        w.wk = matrices(wk, "wk", L, KV, D, group_size);
        w.wv = matrices(wv, "wv", L, KV, D, group_size);
        w.wo = matrices(wo, "wo", L, D, D, group_size);
        check<float>(rms_ffn, "rms_ffn", {L, D}, false);
        w.w1 = matrices(w1, "w1", L, H, D, group_size);
        w.w2 = matrices(w2, "w2", L, D, H, group_size);
        w.w3 = matrices(w3, "w3", L, H, D, group_size);
        check<float>(rms_final, "rms_final", {D}, false);
        w.wcls = matrices(wcls, "wcls", 0, V, D, group_size)[0];
        keep_.insert(keep_.end(), {rms_att, rms_ffn, rms_final});
        w.rms_att = data_ptr<float>(rms_att);
        w.rms_ffn = data_ptr<float>(rms_ffn);
        w.rms_final = data_ptr<float>(rms_final);
        const long min_vocab = sketch_min_vocab();
        l2p::loadavg_path();  // read now, with the GIL held
        // Packing, the sketch and zeroing the KV cache take a while for big models: other Python
        // threads run meanwhile (only the borrowed buffers are read; keep_ holds them).
        py::gil_scoped_release nogil;
        core_ = std::make_unique<ModelCore>(c, w, max_batch, threads, min_vocab, copy_weights);
    }

    // logits (B, vocab) <- tokens (B,) at pos
    void forward(py::array logits, py::array tokens, int pos) {
        const Batch batch = check_batch(tokens, 1);
        const int B = batch.shape[0];
        check_pos(pos, 1);
        check<float>(logits, "logits", {B, core_->config().vocab_size}, true);
        float* out = writable_ptr<float>(logits);
        const int* t = batch.ids.data();
        py::gil_scoped_release nogil;
        core_->forward(t, B, 1, pos, l2p::LOGITS_LAST, out, nullptr);
    }

    // tokens (B, T) at pos..pos+T-1; logits None, (B, vocab) for "last", (B, T, vocab) for "all"
    void prefill(py::object logits, py::array tokens, int pos, const std::string& mode) {
        const Batch batch = check_batch(tokens, 2);
        const int B = batch.shape[0], T = batch.shape[1];
        check_pos(pos, T);
        const long V = core_->config().vocab_size;
        l2p::LogitsMode m;
        float* out = nullptr;
        if (mode == "none") {
            m = l2p::LOGITS_NONE;
        } else if (mode == "last" || mode == "all") {
            if (logits.is_none()) throw std::invalid_argument("prefill: logits output array required for mode " + mode);
            py::array a = as_ndarray(logits, "logits");
            if (mode == "last") {
                check<float>(a, "logits", {B, V}, true);
                m = l2p::LOGITS_LAST;
            } else {
                check<float>(a, "logits", {B, T, V}, true);
                m = l2p::LOGITS_ALL;
            }
            out = writable_ptr<float>(a);
        } else {
            throw std::invalid_argument("prefill: mode must be 'last', 'all' or 'none', got '" + mode + "'");
        }
        const int* t = batch.ids.data();
        py::gil_scoped_release nogil;
        core_->forward(t, B, T, pos, m, out, nullptr);
    }

    // next (B,) int32, logprobs (B,) float32 or None <- tokens (B,) at pos; forced (B,) int32 or None
    void step(py::array next, py::object logprobs, py::array tokens, int pos, double temperature, double top_p,
              py::object forced) {
        const Batch batch = check_batch(tokens, 1);
        const int B = batch.shape[0];
        check_pos(pos, 1);
        if (!(temperature >= 0.0)) throw std::invalid_argument("temperature must be >= 0");
        check<int32_t>(next, "next", {B}, true);
        float* lp = nullptr;
        if (!logprobs.is_none()) {
            py::array a = as_ndarray(logprobs, "logprobs");
            check<float>(a, "logprobs", {B}, true);
            lp = writable_ptr<float>(a);
        }
        const int* f = nullptr;
        std::vector<int> forced_ids;  // (B,) checked and read as a copy (see check_batch)
        if (!forced.is_none()) {
            py::array a = as_ndarray(forced, "forced");
            check<int32_t>(a, "forced", {B}, false);
            forced_ids.assign(data_ptr<int32_t>(a), data_ptr<int32_t>(a) + B);
            f = forced_ids.data();
            for (int b = 0; b < B; ++b)
                if (f[b] >= core_->config().vocab_size)
                    throw std::invalid_argument("forced token id " + std::to_string(f[b]) + " outside the vocabulary");
        }
        int* n = writable_ptr<int32_t>(next);
        const int* t = batch.ids.data();
        py::gil_scoped_release nogil;
        core_->step(n, lp, t, B, pos, temperature, top_p, f, nullptr);
    }

    // times (9,) float64 += seconds per category (base.PROFILE_KEYS order) of one decode step with
    // this sampling: the step() users run (a greedy float32 step reads the classifier sketch, a
    // sampled one every logit). The generators are left as they were.
    void profile(py::array times, py::array tokens, int pos, double temperature, double top_p) {
        const Batch batch = check_batch(tokens, 1);
        const int B = batch.shape[0];
        check_pos(pos, 1);
        if (!(temperature >= 0.0)) throw std::invalid_argument("temperature must be >= 0");
        check<double>(times, "times", {l2p::P_COUNT}, true);
        double* tm = writable_ptr<double>(times);
        const int* t = batch.ids.data();
        std::vector<int> next(B);
        // (B,) generator states before the step, put back however the step ends
        struct Restore {
            l2p::ModelCore* core;
            std::vector<uint64_t> rng;
            ~Restore() {
                for (size_t b = 0; b < rng.size(); ++b) core->set_seed((int)b, rng[b]);
            }
        } restore{core_.get(), std::vector<uint64_t>(B)};
        for (int b = 0; b < B; ++b) restore.rng[b] = core_->rng_state(b);
        py::gil_scoped_release nogil;
        core_->step(next.data(), nullptr, t, B, pos, temperature, top_p, nullptr, tm);
    }

    void set_seeds(py::array seeds) {
        auto s = check<uint64_t>(seeds, "seeds", {ANY}, false);
        if (s[0] > core_->max_batch())
            throw std::invalid_argument(std::to_string(s[0]) + " seeds for max_batch " +
                                        std::to_string(core_->max_batch()));
        const uint64_t* p = data_ptr<uint64_t>(seeds);
        for (long b = 0; b < s[0]; ++b) core_->set_seed((int)b, p[b]);
    }

    uint64_t rng_state(int slot) const {
        if (slot < 0 || slot >= core_->max_batch()) throw std::out_of_range("slot out of range");
        return core_->rng_state(slot);
    }

    // The logits of the last step() (B rows valid), as a copy (max_batch, vocab).
    py::array_t<float> last_logits() {
        {
            py::gil_scoped_release nogil;
            core_->complete_logits();
        }
        const auto& c = core_->config();
        py::array_t<float> a({(py::ssize_t)core_->max_batch(), (py::ssize_t)c.vocab_size});
        std::memcpy(a.mutable_data(), core_->logits(), sizeof(float) * core_->max_batch() * c.vocab_size);
        return a;
    }

    // The logits of the last step() as a view (max_batch, vocab) of the model's own buffer, no
    // copy (B rows valid); the array keeps the model alive. For the finiteness check of step(): after
    // a greedy step on float32 weights only the chosen ids' logits are sure to be current there
    // (last_logits() completes them).
    static py::array logits_view(py::object self) {
        Model& m = self.cast<Model&>();
        const long V = m.core_->config().vocab_size;
        return py::array_t<float>({(py::ssize_t)m.core_->max_batch(), (py::ssize_t)V}, m.core_->logits(), self);
    }

    size_t buffer_bytes() const { return core_->buffer_bytes(); }
    bool greedy_sketch() const { return core_->has_sketch(); }
    long exact_logits() const { return core_->exact_logits(); }
    int threads() const { return core_->threads(); }
    int last_team() const { return core_->last_team(); }
    int max_batch() const { return core_->max_batch(); }

    // Address of a weight matrix's data as the model reads it (tests: the weights are not copied).
    // part: the layer; values: the int8 values (else the Q8_0 scales); float32 matrices: values only.
    uintptr_t weight_address(const std::string& name, int part, bool values) const {
        const WeightPtrs& w = core_->weights();
        const std::vector<Matrix>* per_layer = name == "wq"   ? &w.wq
                                               : name == "wk" ? &w.wk
                                               : name == "wv" ? &w.wv
                                               : name == "wo" ? &w.wo
                                               : name == "w1" ? &w.w1
                                               : name == "w2" ? &w.w2
                                               : name == "w3" ? &w.w3
                                                              : nullptr;
        Matrix m;
        if (per_layer) {
            if (part < 0 || part >= (int)per_layer->size()) throw std::out_of_range("layer out of range");
            m = (*per_layer)[part];
        } else if (name == "token_embedding") {
            m = w.token_embedding;
        } else if (name == "wcls") {
            m = w.wcls;
        } else {
            throw std::invalid_argument("no weight matrix named '" + name + "'");
        }
        if (m.f) return reinterpret_cast<uintptr_t>(m.f);
        return values ? reinterpret_cast<uintptr_t>(m.q.q) : reinterpret_cast<uintptr_t>(m.q.s);
    }
    const char* isa() const { return l2p::isa_name(core_->isa()); }
    int group_size() const { return core_->weights().group_size; }

private:
    // One matrix tensor of `layers` x (d, n) (layers = 0: a single (d, n) matrix): float32
    // (layers, d, n) or (d, n), or with gs > 0 a sequence of one (values int8 (d, n), scales float32
    // (d * n / gs,)) pair per layer (one pair when layers = 0). Kept alive here.
    std::vector<Matrix> matrices(const py::object& o, const char* name, long layers, long d, long n, int gs) {
        const long parts = layers ? layers : 1;
        std::vector<Matrix> out(parts);
        if (gs == 0) {
            py::array a = as_ndarray(o, name);
            if (!layers)
                check<float>(a, name, {d, n}, false);
            else
                check<float>(a, name, {parts, d, n}, false);
            keep_.push_back(a);
            for (long p = 0; p < parts; ++p) out[p].f = data_ptr<float>(a) + p * d * n;
            return out;
        }
        if (py::isinstance<py::array>(o) || !py::isinstance<py::sequence>(o))
            throw std::invalid_argument(std::string(name) + ": Q8_0 weights (group_size " + std::to_string(gs) +
                                        ") must be a sequence of (values, scales) pairs");
        if ((d * n) % gs)
            throw std::invalid_argument(std::string(name) + ": group size " + std::to_string(gs) +
                                        " does not divide a part of " + std::to_string(d * n) + " values");
        py::sequence seq = py::reinterpret_borrow<py::sequence>(o);
        if ((long)py::len(seq) != parts)
            throw std::invalid_argument(std::string(name) + ": expected " + std::to_string(parts) + " parts, got " +
                                        std::to_string(py::len(seq)));
        for (long p = 0; p < parts; ++p) {
            py::sequence pair = py::reinterpret_borrow<py::sequence>(seq[p]);
            if (py::len(pair) != 2)
                throw std::invalid_argument(std::string(name) + ": each part must be a (values, scales) pair");
            py::array values = as_ndarray(pair[0], name), scales = as_ndarray(pair[1], name);
            check<int8_t>(values, (std::string(name) + " values").c_str(), {d, n}, false);
            check<float>(scales, (std::string(name) + " scales").c_str(), {d * n / gs}, false);
            keep_.push_back(values);
            keep_.push_back(scales);
            out[p].q = QMat{data_ptr<int8_t>(values), data_ptr<float>(scales)};
        }
        return out;
    }

    // A call's tokens: their shape and a checked copy of the ids, which the call reads with the GIL
    // released (another Python thread writing the array cannot slip an unchecked id past the check).
    struct Batch {
        std::vector<long> shape;
        std::vector<int> ids;  // (B * T,)
    };
    Batch check_batch(const py::array& tokens, int ndim) {
        std::vector<long> shape(ndim, ANY);
        shape = check<int32_t>(tokens, "tokens", shape, false);
        if (shape[0] < 1 || shape[0] > core_->max_batch())
            throw std::invalid_argument("batch of " + std::to_string(shape[0]) +
                                        " sequences, the model was made for 1.." + std::to_string(core_->max_batch()));
        if (ndim == 2 && shape[1] < 1) throw std::invalid_argument("tokens: empty run of positions");
        long n = 1;
        for (long s : shape) n *= s;
        const int32_t* t = data_ptr<int32_t>(tokens);
        std::vector<int> ids(t, t + n);
        check_tokens(ids.data(), n, core_->config().vocab_size);
        return {shape, std::move(ids)};
    }
    void check_pos(int pos, int T) {
        if (pos < 0 || (long)pos + T > core_->config().seq_len)
            throw std::invalid_argument("positions " + std::to_string(pos) + ".." + std::to_string(pos + T - 1) +
                                        " outside the context 0.." + std::to_string(core_->config().seq_len - 1));
    }

    std::vector<py::array> keep_;  // the borrowed weight arrays (memmap views stay valid)
    std::unique_ptr<ModelCore> core_;
};

// ---- standalone kernels for tests: outputs first, whole arrays, default OpenMP threads -------------
void standalone_matmul(py::array out, py::array x, py::array w) {
    auto ws = check<float>(w, "w", {ANY, ANY}, false);
    const long d = ws[0], n = ws[1];
    long rows;
    if (x.ndim() == 1) {
        check<float>(x, "x", {n}, false);
        check<float>(out, "out", {d}, true);
        rows = 1;
    } else {
        rows = check<float>(x, "x", {ANY, n}, false)[0];
        check<float>(out, "out", {rows, d}, true);
    }
    float* o = writable_ptr<float>(out);
    const float* xp = data_ptr<float>(x);
    const float* wp = data_ptr<float>(w);
    py::gil_scoped_release nogil;
    const bool stream = d * n * 4 > l2p::STREAM_BYTES;
#pragma omp parallel num_threads(l2p::default_team())
    l2p::matmul(o, d, xp, n, (int)rows, wp, (int)d, (int)n, stream);
}

// Q8_0: q (rows, n) int8 and s (rows, ceil(n / gs)) float32 <- x (rows, n), runq's activation quantization
void standalone_quantize(py::array q, py::array s, py::array x, int group_size) {
    if (group_size < 1) throw std::invalid_argument("group_size must be >= 1");
    auto xs = check<float>(x, "x", {ANY, ANY}, false);
    check<int8_t>(q, "q", xs, true);
    check<float>(s, "s", {xs[0], l2p::q8_groups((int)xs[1], group_size)}, true);
    int8_t* qp = writable_ptr<int8_t>(q);
    float* sp = writable_ptr<float>(s);
    const float* xp = data_ptr<float>(x);
    const long groups = l2p::q8_groups((int)xs[1], group_size);
    for (long r = 0; r < xs[0]; ++r)
        l2p::quantize_row(qp + r * xs[1], sp + r * groups, xp + r * xs[1], (int)xs[1], group_size);
}

// out (rows, d) = x (rows, n) @ w.T for a Q8_0 matrix w: values (d, n) int8, scales (d * n / gs,) float32;
// x is quantized per row first (as the model does), then every output is runq's group sum.
void standalone_matmul_q8(py::array out, py::array x, py::array values, py::array scales, int group_size) {
    auto vs = check<int8_t>(values, "values", {ANY, ANY}, false);
    const long d = vs[0], n = vs[1];
    if (group_size < 1 || (d * n) % group_size)
        throw std::invalid_argument("group_size must be >= 1 and divide the matrix's " + std::to_string(d * n) +
                                    " values");
    check<float>(scales, "scales", {d * n / group_size}, false);
    const long rows = check<float>(x, "x", {ANY, n}, false)[0];
    check<float>(out, "out", {rows, d}, true);
    const long groups = l2p::q8_groups((int)n, group_size);
    std::vector<int8_t> xq(rows * n);
    std::vector<float> xs(rows * groups);
    const float* xp = data_ptr<float>(x);
    for (long r = 0; r < rows; ++r)
        l2p::quantize_row(xq.data() + r * n, xs.data() + r * groups, xp + r * n, (int)n, group_size);
    l2p::QRows qrows{xq.data(), xs.data(), n, groups, group_size};
    l2p::MatJob job{Matrix{nullptr, QMat{data_ptr<int8_t>(values), data_ptr<float>(scales)}}, (int)d,
                    writable_ptr<float>(out), d};
    // As a Model reads them (prepare_q8), and at a packed level the activations' group sums.
    const bool pack = l2p::kernels().q8_packed;
    const l2p::Q8Extras e = l2p::q8_extras(d, n, group_size, pack);
    std::vector<float> turned(e.turned), packed_scales(e.packed_scales);
    std::vector<uint8_t> packed(e.packed);
    l2p::prepare_q8(job.w.q, d, n, group_size, pack, turned.data(), packed.data(), packed_scales.data());
    std::vector<int32_t> sums;
    if (e.packed) {
        sums.resize(rows * groups);
        for (long r = 0; r < rows; ++r)
            l2p::q8_group_sums(sums.data() + r * groups, xq.data() + r * n, (int)n, group_size);
        qrows.sum = sums.data();
    }
    py::gil_scoped_release nogil;
#pragma omp parallel num_threads(l2p::default_team())
    l2p::matmul_jobs(&job, 1, nullptr, 0, (int)rows, (int)n, false, &qrows);
}

void standalone_rmsnorm(py::array out, py::array x, py::array w) {
    const long n = check<float>(w, "w", {ANY}, false)[0];
    const long rows = x.ndim() == 1 ? 1 : ANY;
    std::vector<long> xs = x.ndim() == 1 ? check<float>(x, "x", {n}, false) : check<float>(x, "x", {rows, n}, false);
    const int R = x.ndim() == 1 ? 1 : (int)xs[0];
    check<float>(out, "out", xs, true);
    float* o = writable_ptr<float>(out);
    const float* xp = data_ptr<float>(x);
    const float* wp = data_ptr<float>(w);
    py::gil_scoped_release nogil;
#pragma omp parallel num_threads(l2p::default_team())
    l2p::rmsnorm(o, xp, wp, R, (int)n);
}

// x (rows, n_heads * head_size) in place, row r at positions[r]
void standalone_rope(py::array x, py::array positions, int head_size) {
    auto xs = check<float>(x, "x", {ANY, ANY}, true);
    auto ps = check<int32_t>(positions, "positions", {xs[0]}, false);
    if (head_size <= 0 || head_size % 2 || xs[1] % head_size)
        throw std::invalid_argument("head_size must be even and divide the row length");
    const int* p = data_ptr<int32_t>(positions);
    // (rows, head_size) the cos/sin of each row's position: memory for the rows given, whatever the positions
    std::vector<float> table(ps[0] * head_size);
    std::vector<int> row(ps[0]);  // (rows,) row r reads table row r
    for (long r = 0; r < ps[0]; ++r) {
        if (p[r] < 0) throw std::invalid_argument("negative position");
        l2p::rope_row(table.data() + r * head_size, p[r], head_size);
        row[r] = (int)r;
    }
    float* xp = writable_ptr<float>(x);
    py::gil_scoped_release nogil;
#pragma omp parallel num_threads(l2p::default_team())
    l2p::rope(xp, (int)xs[0], (int)(xs[1] / head_size), head_size, row.data(), table.data());
}

// out (rows, n_heads*hs) <- q (rows, n_heads*hs), caches (n_slots, seq_len, kv_dim), rows r -> (slot[r], pos[r])
void standalone_attention(py::array out, py::array q, py::array k_cache, py::array v_cache, py::array slots,
                          py::array positions, int n_heads, int n_kv_heads) {
    auto qs = check<float>(q, "q", {ANY, ANY}, false);
    if (n_heads <= 0 || n_kv_heads <= 0 || n_heads % n_kv_heads || qs[1] % n_heads || qs[1] == 0)
        throw std::invalid_argument("inconsistent head counts (or an empty head)");
    const long hs = qs[1] / n_heads;
    auto ks = check<float>(k_cache, "k_cache", {ANY, ANY, hs * n_kv_heads}, false);
    check<float>(v_cache, "v_cache", ks, false);
    check<float>(out, "out", qs, true);
    check<int32_t>(slots, "slots", {qs[0]}, false);
    check<int32_t>(positions, "positions", {qs[0]}, false);
    const int* sp = data_ptr<int32_t>(slots);
    const int* pp = data_ptr<int32_t>(positions);
    for (long r = 0; r < qs[0]; ++r)
        if (sp[r] < 0 || sp[r] >= ks[0] || pp[r] < 0 || pp[r] >= ks[1])
            throw std::invalid_argument("slot or position outside the cache");
    std::vector<float> scratch((long)omp_get_max_threads() * n_heads * ks[1]);
    float* o = writable_ptr<float>(out);
    const float *qp = data_ptr<float>(q), *kp = data_ptr<float>(k_cache), *vp = data_ptr<float>(v_cache);
    py::gil_scoped_release nogil;
#pragma omp parallel num_threads(l2p::default_team())
    l2p::attention(o, qp, kp, vp, sp, pp, (int)qs[0], n_heads, n_kv_heads, (int)hs, (int)ks[1], scratch.data());
}

void standalone_swiglu(py::array h, py::array g) {
    auto s = check<float>(h, "h", {ANY, ANY}, true);
    check<float>(g, "g", s, false);
    float* hp = writable_ptr<float>(h);
    const float* gp = data_ptr<float>(g);
    py::gil_scoped_release nogil;
#pragma omp parallel num_threads(l2p::default_team())
    l2p::swiglu(hp, gp, (int)s[0], (int)s[1]);
}

void standalone_softmax(py::array out, py::array x) {
    auto s = check<float>(x, "x", {ANY}, false);
    if (s[0] < 1) throw std::invalid_argument("x: empty");
    check<float>(out, "out", s, true);
    l2p::softmax(writable_ptr<float>(out), data_ptr<float>(x), (int)s[0]);
}

// out (k, n) = exp(x / temperature - the row's max) per row (softmax before its division, out may be
// x); returns the k rows' sequential float32 sums of out.
py::array_t<float> standalone_exp_sum(py::array out, py::array x, double temperature) {
    auto s = check<float>(x, "x", {ANY, ANY}, false);
    if (s[1] < 1) throw std::invalid_argument("x: empty rows");
    check<float>(out, "out", s, true);
    if (!(temperature > 0.0)) throw std::invalid_argument("temperature must be > 0");
    const int k = (int)s[0], n = (int)s[1];
    std::vector<float*> e(k);
    std::vector<const float*> rows(k);
    for (int r = 0; r < k; ++r) {
        e[r] = writable_ptr<float>(out) + (long)r * n;
        rows[r] = data_ptr<float>(x) + (long)r * n;
    }
    py::array_t<float> sums(k);
    l2p::kernels().exp_rows(e.data(), rows.data(), k, n, (float)temperature, sums.mutable_data());
    return sums;
}

int standalone_argmax(py::array x) {
    auto s = check<float>(x, "x", {ANY}, false);
    if (s[0] < 1) throw std::invalid_argument("x: empty");
    return l2p::argmax(data_ptr<float>(x), (int)s[0]);
}

// One sampling decision as the run-compatible sampler makes it; state (1,) uint64 is advanced.
int standalone_sample(py::array logits, double temperature, double top_p, py::array state) {
    auto s = check<float>(logits, "logits", {ANY}, false);
    if (s[0] < 2) throw std::invalid_argument("logits: need at least 2 entries");
    if (!(temperature >= 0.0)) throw std::invalid_argument("temperature must be >= 0");
    check<uint64_t>(state, "state", {1}, true);
    std::vector<float> probs(s[0]), cand(s[0]);
    std::vector<int> idx(s[0]);
    return l2p::sample(l2p::kernels(), data_ptr<float>(logits), (int)s[0], temperature, top_p,
                       writable_ptr<uint64_t>(state), probs.data(), idx.data(), cand.data());
}

// out (n,) uint32 draws of the generator; state (1,) uint64 advanced
void standalone_rng_u32(py::array out, py::array state) {
    auto s = check<uint32_t>(out, "out", {ANY}, true);
    check<uint64_t>(state, "state", {1}, true);
    uint32_t* o = writable_ptr<uint32_t>(out);
    uint64_t* st = writable_ptr<uint64_t>(state);
    for (long i = 0; i < s[0]; ++i) o[i] = l2p::rng_u32(st);
}

double standalone_log_softmax_at(py::array x, int token) {
    auto s = check<float>(x, "x", {ANY}, false);
    if (token < 0 || token >= s[0]) throw std::invalid_argument("token outside x");
    return l2p::log_softmax_at(data_ptr<float>(x), (int)s[0], token);
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
    m.doc() = "llama2py C++ CPU kernels (OpenMP) and the Model used by llama2py.backends.cpu";
    l2p::watch_fork();
    m.def("forked_team", &l2p::forked_team,
          "True in a process forked after this extension had started a team of threads: every region runs on "
          "one thread there (libgomp's team threads do not survive fork)");
    {  // the instruction-set level: the best this CPU runs, or a lower one forced by LLAMA2PY_ISA
        const char* env = std::getenv("LLAMA2PY_ISA");
        const std::string err = l2p::select_isa(env ? env : "");
        if (!err.empty()) throw py::import_error("LLAMA2PY_ISA: " + err);  // (err names the value)
    }
    m.def(
        "isa", []() { return std::string(l2p::isa_name(l2p::kernels().isa)); },
        "the instruction-set level whose kernels new models and the standalone kernels use");
    m.def(
        "isa_levels",
        []() {
            py::list out;
            for (int i = 0; i < l2p::ISA_COUNT; ++i)
                if (l2p::isa_supported((l2p::Isa)i)) out.append(l2p::isa_name((l2p::Isa)i));
            return out;
        },
        "the levels this CPU supports, lowest first");
    m.def(
        "set_isa",
        [](const std::string& name) {
            const std::string err = l2p::select_isa(name);
            if (!err.empty()) throw std::invalid_argument(err);
        },
        py::arg("name"), "use this level for models made from now on (\"\" = the best)");
    m.def("matmul", &standalone_matmul, py::arg("out"), py::arg("x"), py::arg("w"),
          "out (d,) or (rows, d) = x (n,) or (rows, n) @ w (d, n).T");
    m.def("quantize", &standalone_quantize, py::arg("q"), py::arg("s"), py::arg("x"), py::arg("group_size"),
          "Q8_0 activations: q (rows, n) int8, s (rows, groups) <- x (rows, n)");
    m.def(
        "packed_q8_bytes",
        [](int dim, int hidden_dim, int n_layers, int n_heads, int n_kv_heads, int vocab_size, int group_size) {
            const ModelConfig c =
                checked_config(dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, 1, group_size);
            return l2p::ModelCore::packed_q8_size(c, group_size);
        },
        py::arg("dim"), py::arg("hidden_dim"), py::arg("n_layers"), py::arg("n_heads"), py::arg("n_kv_heads"),
        py::arg("vocab_size"), py::arg("group_size"),
        "bytes of the packed int8 copy a Q8_0 Model of this shape makes at the current level (0: none)");
    m.def(
        "float_copy_bytes",
        [](int dim, int hidden_dim, int n_layers, int n_heads, int n_kv_heads, int vocab_size, bool shared) {
            const ModelConfig c = checked_config(dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, 1, 0);
            return l2p::ModelCore::float_copy_size(c, 0, shared);
        },
        py::arg("dim"), py::arg("hidden_dim"), py::arg("n_layers"), py::arg("n_heads"), py::arg("n_kv_heads"),
        py::arg("vocab_size"), py::arg("shared"),
        "bytes of the huge-page copy a float32 Model of this shape makes of its streamed weights (0: none)");
    m.def(
        "sketch_bytes",
        [](int dim, int vocab_size) {
            if (dim <= 0 || vocab_size <= 0) throw std::invalid_argument("dim and vocab_size must be >= 1");
            ModelConfig c{dim, 1, 1, 1, 1, vocab_size, 1};
            return l2p::ModelCore::sketch_size(c, sketch_min_vocab());
        },
        py::arg("dim"), py::arg("vocab_size"),
        "bytes of the int8 classifier sketch a float32 Model of this shape makes for greedy steps (0: none)");
    m.def("matmul_q8", &standalone_matmul_q8, py::arg("out"), py::arg("x"), py::arg("values"), py::arg("scales"),
          py::arg("group_size"),
          "out (rows, d) = x (rows, n) @ w.T, w Q8_0 (values (d, n), scales), runq's arithmetic");
    m.def("rmsnorm", &standalone_rmsnorm, py::arg("out"), py::arg("x"), py::arg("w"),
          "out = w * x / sqrt(mean(x^2) + 1e-5) per row");
    m.def("rope", &standalone_rope, py::arg("x"), py::arg("positions"), py::arg("head_size"),
          "rotate x (rows, n_heads*head_size) in place, row r at positions[r]");
    m.def("attention", &standalone_attention, py::arg("out"), py::arg("q"), py::arg("k_cache"), py::arg("v_cache"),
          py::arg("slots"), py::arg("positions"), py::arg("n_heads"), py::arg("n_kv_heads"),
          "causal GQA attention of q rows over cache slot slots[r], positions 0..positions[r]");
    m.def("swiglu", &standalone_swiglu, py::arg("h"), py::arg("g"), "h = silu(h) * g in place");
    m.def("softmax", &standalone_softmax, py::arg("out"), py::arg("x"));
    m.def("exp_sum", &standalone_exp_sum, py::arg("out"), py::arg("x"), py::arg("temperature") = 1.0);
    m.def("argmax", &standalone_argmax, py::arg("x"));
    m.def("sample", &standalone_sample, py::arg("logits"), py::arg("temperature"), py::arg("top_p"), py::arg("state"));
    m.def("rng_u32", &standalone_rng_u32, py::arg("out"), py::arg("state"));
    m.def("log_softmax_at", &standalone_log_softmax_at, py::arg("x"), py::arg("token"));

    py::class_<Model>(m, "Model")
        .def(py::init<int, int, int, int, int, int, int, int, int, py::object, py::array, py::object, py::object,
                      py::object, py::object, py::array, py::object, py::object, py::object, py::array, py::object, int,
                      bool>(),
             py::arg("dim"), py::arg("hidden_dim"), py::arg("n_layers"), py::arg("n_heads"), py::arg("n_kv_heads"),
             py::arg("vocab_size"), py::arg("seq_len"), py::arg("max_batch"), py::arg("threads"),
             py::arg("token_embedding"), py::arg("rms_att"), py::arg("wq"), py::arg("wk"), py::arg("wv"), py::arg("wo"),
             py::arg("rms_ffn"), py::arg("w1"), py::arg("w2"), py::arg("w3"), py::arg("rms_final"), py::arg("wcls"),
             py::arg("group_size") = 0, py::arg("copy_weights") = false)
        .def("forward", &Model::forward, py::arg("logits"), py::arg("tokens"), py::arg("pos"))
        .def("prefill", &Model::prefill, py::arg("logits"), py::arg("tokens"), py::arg("pos"), py::arg("mode"))
        .def("step", &Model::step, py::arg("next"), py::arg("logprobs"), py::arg("tokens"), py::arg("pos"),
             py::arg("temperature"), py::arg("top_p"), py::arg("forced"))
        .def("profile", &Model::profile, py::arg("times"), py::arg("tokens"), py::arg("pos"), py::arg("temperature"),
             py::arg("top_p"))
        .def("set_seeds", &Model::set_seeds, py::arg("seeds"))
        .def("rng_state", &Model::rng_state, py::arg("slot"))
        .def("last_logits", &Model::last_logits)
        .def("logits_view", &Model::logits_view)
        .def_property_readonly("buffer_bytes", &Model::buffer_bytes)
        .def_property_readonly("greedy_sketch", &Model::greedy_sketch)
        .def_property_readonly("exact_logits", &Model::exact_logits)
        .def_property_readonly("threads", &Model::threads)
        .def_property_readonly("last_team", &Model::last_team)
        .def_property_readonly("max_batch", &Model::max_batch)
        .def_property_readonly("isa", &Model::isa)
        .def_property_readonly("group_size", &Model::group_size)
        .def("weight_address", &Model::weight_address, py::arg("name"), py::arg("part") = 0, py::arg("values") = true);
}
