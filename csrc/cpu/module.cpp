// pybind11 module llama2py._cpu: argument checking at the boundary, then the C++ kernels with the GIL
// released. Outputs come first in every signature. Shape or dtype mistakes raise ValueError
// (std::invalid_argument); nothing prints or exits.
#include <omp.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels.h"
#include "model.h"

namespace py = pybind11;
using l2p::ModelConfig;
using l2p::ModelCore;
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

// Check dtype, C-contiguity, shape (-1 = any) and writability; return the checked shape.
template <typename T>
std::vector<long> check(const py::array& a, const char* name, std::vector<long> shape, bool writable) {
    const char* tname = std::is_same<T, float>::value     ? "float32"
                        : std::is_same<T, int32_t>::value ? "int32"
                        : std::is_same<T, double>::value  ? "float64"
                                                          : "uint64";
    if (!py::dtype::of<T>().is(a.dtype()) &&
        !(a.dtype().kind() == py::dtype::of<T>().kind() && a.dtype().itemsize() == (py::ssize_t)sizeof(T)))
        throw std::invalid_argument(std::string(name) + ": expected a " + tname + " array, got dtype " +
                                    std::string(py::str(a.dtype())));
    if (!(a.flags() & py::array::c_style))
        throw std::invalid_argument(std::string(name) + ": expected a C-contiguous array");
    if (writable && !a.writeable()) throw std::invalid_argument(std::string(name) + ": output array is read-only");
    bool ok = a.ndim() == (py::ssize_t)shape.size();
    for (size_t i = 0; ok && i < shape.size(); ++i) {
        if (shape[i] < 0) shape[i] = a.shape(i);
        ok = a.shape(i) == shape[i];
    }
    if (!ok)
        throw std::invalid_argument(std::string(name) + ": expected shape " + shape_str(shape) + ", got " +
                                    shape_str(a));
    return shape;
}

template <typename T>
T* mut(py::array& a) {
    return static_cast<T*>(a.mutable_data());
}
template <typename T>
const T* cst(const py::array& a) {
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

class Model {
public:
    Model(int dim, int hidden_dim, int n_layers, int n_heads, int n_kv_heads, int vocab_size, int seq_len,
          int max_batch, int threads, py::array token_embedding, py::array rms_att, py::array wq, py::array wk,
          py::array wv, py::array wo, py::array rms_ffn, py::array w1, py::array w2, py::array w3, py::array rms_final,
          py::array wcls) {
        if (dim <= 0 || hidden_dim <= 0 || n_layers <= 0 || n_heads <= 0 || n_kv_heads <= 0 || vocab_size <= 0 ||
            seq_len <= 0 || dim % n_heads || n_heads % n_kv_heads || (dim / n_heads) % 2)
            throw std::invalid_argument("inconsistent model config");
        if (max_batch < 1) throw std::invalid_argument("max_batch must be >= 1");
        if (threads < 0) throw std::invalid_argument("threads must be >= 0 (0 = OpenMP default)");
        ModelConfig c{dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len};
        const long L = n_layers, D = dim, H = hidden_dim, KV = c.kv_dim(), V = vocab_size;
        check<float>(token_embedding, "token_embedding", {V, D}, false);
        check<float>(rms_att, "rms_att", {L, D}, false);
        check<float>(wq, "wq", {L, D, D}, false);
        check<float>(wk, "wk", {L, KV, D}, false);
        check<float>(wv, "wv", {L, KV, D}, false);
        check<float>(wo, "wo", {L, D, D}, false);
        check<float>(rms_ffn, "rms_ffn", {L, D}, false);
        check<float>(w1, "w1", {L, H, D}, false);
        check<float>(w2, "w2", {L, D, H}, false);
        check<float>(w3, "w3", {L, H, D}, false);
        check<float>(rms_final, "rms_final", {D}, false);
        check<float>(wcls, "wcls", {V, D}, false);
        keep_ = {token_embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, wcls};
        WeightPtrs w{cst<float>(token_embedding),
                     cst<float>(rms_att),
                     cst<float>(wq),
                     cst<float>(wk),
                     cst<float>(wv),
                     cst<float>(wo),
                     cst<float>(rms_ffn),
                     cst<float>(w1),
                     cst<float>(w2),
                     cst<float>(w3),
                     cst<float>(rms_final),
                     cst<float>(wcls)};
        core_ = std::make_unique<ModelCore>(c, w, max_batch, threads);
    }

    // logits (B, vocab) <- tokens (B,) at pos
    void forward(py::array logits, py::array tokens, int pos) {
        const int B = check_batch(tokens, 1)[0];
        check_pos(pos, 1);
        check<float>(logits, "logits", {B, core_->config().vocab_size}, true);
        float* out = mut<float>(logits);
        const int* t = cst<int32_t>(tokens);
        py::gil_scoped_release nogil;
        core_->forward(t, B, 1, pos, l2p::LOGITS_LAST, out, nullptr);
    }

    // tokens (B, T) at pos..pos+T-1; logits None, (B, vocab) for "last", (B, T, vocab) for "all"
    void prefill(py::object logits, py::array tokens, int pos, const std::string& mode) {
        auto bt = check_batch(tokens, 2);
        const int B = bt[0], T = bt[1];
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
            out = mut<float>(a);
        } else {
            throw std::invalid_argument("prefill: mode must be 'last', 'all' or 'none', got '" + mode + "'");
        }
        const int* t = cst<int32_t>(tokens);
        py::gil_scoped_release nogil;
        core_->forward(t, B, T, pos, m, out, nullptr);
    }

    // next (B,) int32, logprobs (B,) float32 or None <- tokens (B,) at pos; forced (B,) int32 or None
    void step(py::array next, py::object logprobs, py::array tokens, int pos, double temperature, double top_p,
              py::object forced) {
        const int B = check_batch(tokens, 1)[0];
        check_pos(pos, 1);
        if (!(temperature >= 0.0)) throw std::invalid_argument("temperature must be >= 0");
        check<int32_t>(next, "next", {B}, true);
        float* lp = nullptr;
        if (!logprobs.is_none()) {
            py::array a = as_ndarray(logprobs, "logprobs");
            check<float>(a, "logprobs", {B}, true);
            lp = mut<float>(a);
        }
        const int* f = nullptr;
        if (!forced.is_none()) {
            py::array a = as_ndarray(forced, "forced");
            check<int32_t>(a, "forced", {B}, false);
            f = cst<int32_t>(a);
            for (int b = 0; b < B; ++b)
                if (f[b] >= core_->config().vocab_size)
                    throw std::invalid_argument("forced token id " + std::to_string(f[b]) + " outside the vocabulary");
        }
        int* n = mut<int32_t>(next);
        const int* t = cst<int32_t>(tokens);
        py::gil_scoped_release nogil;
        core_->step(n, lp, t, B, pos, temperature, top_p, f, nullptr);
    }

    // times (9,) float64 += seconds per category (base.PROFILE_KEYS order) of one greedy decode step
    void profile(py::array times, py::array tokens, int pos) {
        const int B = check_batch(tokens, 1)[0];
        check_pos(pos, 1);
        check<double>(times, "times", {l2p::P_COUNT}, true);
        double* tm = mut<double>(times);
        const int* t = cst<int32_t>(tokens);
        std::vector<int> next(B);
        py::gil_scoped_release nogil;
        core_->step(next.data(), nullptr, t, B, pos, 0.0, 0.0, nullptr, tm);
    }

    void set_seeds(py::array seeds) {
        auto s = check<uint64_t>(seeds, "seeds", {-1}, false);
        if (s[0] > core_->max_batch())
            throw std::invalid_argument(std::to_string(s[0]) + " seeds for max_batch " +
                                        std::to_string(core_->max_batch()));
        const uint64_t* p = cst<uint64_t>(seeds);
        for (long b = 0; b < s[0]; ++b) core_->set_seed((int)b, p[b]);
    }

    uint64_t rng_state(int slot) const {
        if (slot < 0 || slot >= core_->max_batch()) throw std::out_of_range("slot out of range");
        return core_->rng_state(slot);
    }

    // The logits of the last step() (B rows valid), as a copy (max_batch, vocab).
    py::array_t<float> last_logits() const {
        const auto& c = core_->config();
        py::array_t<float> a({(py::ssize_t)core_->max_batch(), (py::ssize_t)c.vocab_size});
        std::memcpy(a.mutable_data(), core_->logits(), sizeof(float) * core_->max_batch() * c.vocab_size);
        return a;
    }

    // The logits of the last step() as a view (max_batch, vocab) of the model's own buffer, no
    // copy (B rows valid); the array keeps the model alive. For the finiteness check of step().
    static py::array logits_view(py::object self) {
        Model& m = self.cast<Model&>();
        const long V = m.core_->config().vocab_size;
        return py::array_t<float>({(py::ssize_t)m.core_->max_batch(), (py::ssize_t)V}, m.core_->logits(), self);
    }

    size_t buffer_bytes() const { return core_->buffer_bytes(); }
    int threads() const { return core_->threads(); }
    int max_batch() const { return core_->max_batch(); }

private:
    std::vector<long> check_batch(const py::array& tokens, int ndim) {
        std::vector<long> shape(ndim, -1);
        shape = check<int32_t>(tokens, "tokens", shape, false);
        if (shape[0] < 1 || shape[0] > core_->max_batch())
            throw std::invalid_argument("batch of " + std::to_string(shape[0]) +
                                        " sequences, the model was made for 1.." + std::to_string(core_->max_batch()));
        if (ndim == 2 && shape[1] < 1) throw std::invalid_argument("tokens: empty run of positions");
        long n = 1;
        for (long s : shape) n *= s;
        check_tokens(cst<int32_t>(tokens), n, core_->config().vocab_size);
        return shape;
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
void k_matmul(py::array out, py::array x, py::array w) {
    auto ws = check<float>(w, "w", {-1, -1}, false);
    const long d = ws[0], n = ws[1];
    long rows;
    if (x.ndim() == 1) {
        check<float>(x, "x", {n}, false);
        check<float>(out, "out", {d}, true);
        rows = 1;
    } else {
        rows = check<float>(x, "x", {-1, n}, false)[0];
        check<float>(out, "out", {rows, d}, true);
    }
    float* o = mut<float>(out);
    const float* xp = cst<float>(x);
    const float* wp = cst<float>(w);
    py::gil_scoped_release nogil;
    const bool stream = d * n * 4 > l2p::STREAM_BYTES;
#pragma omp parallel
    l2p::matmul(o, d, xp, n, (int)rows, wp, (int)d, (int)n, stream);
}

void k_rmsnorm(py::array out, py::array x, py::array w) {
    const long n = check<float>(w, "w", {-1}, false)[0];
    const long rows = x.ndim() == 1 ? 1 : -1;
    std::vector<long> xs = x.ndim() == 1 ? check<float>(x, "x", {n}, false) : check<float>(x, "x", {rows, n}, false);
    const int R = x.ndim() == 1 ? 1 : (int)xs[0];
    check<float>(out, "out", xs, true);
    float* o = mut<float>(out);
    const float* xp = cst<float>(x);
    const float* wp = cst<float>(w);
    py::gil_scoped_release nogil;
#pragma omp parallel
    l2p::rmsnorm(o, xp, wp, R, (int)n);
}

// x (rows, n_heads * head_size) in place, row r at positions[r]
void k_rope(py::array x, py::array positions, int head_size) {
    auto xs = check<float>(x, "x", {-1, -1}, true);
    auto ps = check<int32_t>(positions, "positions", {xs[0]}, false);
    if (head_size <= 0 || head_size % 2 || xs[1] % head_size)
        throw std::invalid_argument("head_size must be even and divide the row length");
    const int* p = cst<int32_t>(positions);
    int mx = 0;
    for (long i = 0; i < ps[0]; ++i) {
        if (p[i] < 0) throw std::invalid_argument("negative position");
        mx = std::max(mx, p[i]);
    }
    std::vector<float> table((long)(mx + 1) * head_size);
    l2p::rope_table(table.data(), mx + 1, head_size);
    float* xp = mut<float>(x);
    py::gil_scoped_release nogil;
#pragma omp parallel
    l2p::rope(xp, (int)xs[0], (int)(xs[1] / head_size), head_size, p, table.data());
}

// out (rows, n_heads*hs) <- q (rows, n_heads*hs), caches (n_slots, seq_len, kv_dim), rows r -> (slot[r], pos[r])
void k_attention(py::array out, py::array q, py::array k_cache, py::array v_cache, py::array slots, py::array positions,
                 int n_heads, int n_kv_heads) {
    auto qs = check<float>(q, "q", {-1, -1}, false);
    if (n_heads <= 0 || n_kv_heads <= 0 || n_heads % n_kv_heads || qs[1] % n_heads)
        throw std::invalid_argument("inconsistent head counts");
    const long hs = qs[1] / n_heads;
    auto ks = check<float>(k_cache, "k_cache", {-1, -1, hs * n_kv_heads}, false);
    check<float>(v_cache, "v_cache", ks, false);
    check<float>(out, "out", qs, true);
    check<int32_t>(slots, "slots", {qs[0]}, false);
    check<int32_t>(positions, "positions", {qs[0]}, false);
    const int* sp = cst<int32_t>(slots);
    const int* pp = cst<int32_t>(positions);
    for (long r = 0; r < qs[0]; ++r)
        if (sp[r] < 0 || sp[r] >= ks[0] || pp[r] < 0 || pp[r] >= ks[1])
            throw std::invalid_argument("slot or position outside the cache");
    std::vector<float> scratch((long)omp_get_max_threads() * n_heads * ks[1]);
    float* o = mut<float>(out);
    const float *qp = cst<float>(q), *kp = cst<float>(k_cache), *vp = cst<float>(v_cache);
    py::gil_scoped_release nogil;
#pragma omp parallel
    l2p::attention(o, qp, kp, vp, sp, pp, (int)qs[0], n_heads, n_kv_heads, (int)hs, (int)ks[1], scratch.data());
}

void k_swiglu(py::array h, py::array g) {
    auto s = check<float>(h, "h", {-1, -1}, true);
    check<float>(g, "g", s, false);
    float* hp = mut<float>(h);
    const float* gp = cst<float>(g);
    py::gil_scoped_release nogil;
#pragma omp parallel
    l2p::swiglu(hp, gp, (int)s[0], (int)s[1]);
}

void k_softmax(py::array out, py::array x) {
    auto s = check<float>(x, "x", {-1}, false);
    if (s[0] < 1) throw std::invalid_argument("x: empty");
    check<float>(out, "out", s, true);
    l2p::softmax(mut<float>(out), cst<float>(x), (int)s[0]);
}

int k_argmax(py::array x) {
    auto s = check<float>(x, "x", {-1}, false);
    if (s[0] < 1) throw std::invalid_argument("x: empty");
    return l2p::argmax(cst<float>(x), (int)s[0]);
}

// One sampling decision as the run-compatible sampler makes it; state (1,) uint64 is advanced.
int k_sample(py::array logits, double temperature, double top_p, py::array state) {
    auto s = check<float>(logits, "logits", {-1}, false);
    if (s[0] < 2) throw std::invalid_argument("logits: need at least 2 entries");
    if (!(temperature >= 0.0)) throw std::invalid_argument("temperature must be >= 0");
    check<uint64_t>(state, "state", {1}, true);
    std::vector<float> probs(s[0]), cand(s[0]);
    std::vector<int> idx(s[0]);
    return l2p::sample(cst<float>(logits), (int)s[0], temperature, top_p, mut<uint64_t>(state), probs.data(),
                       idx.data(), cand.data());
}

// out (n,) uint32 draws of the generator; state (1,) uint64 advanced
void k_rng_u32(py::array out, py::array state) {
    auto s = check<uint32_t>(out, "out", {-1}, true);
    check<uint64_t>(state, "state", {1}, true);
    uint32_t* o = mut<uint32_t>(out);
    uint64_t* st = mut<uint64_t>(state);
    for (long i = 0; i < s[0]; ++i) o[i] = l2p::rng_u32(st);
}

double k_log_softmax_at(py::array x, int token) {
    auto s = check<float>(x, "x", {-1}, false);
    if (token < 0 || token >= s[0]) throw std::invalid_argument("token outside x");
    return l2p::log_softmax_at(cst<float>(x), (int)s[0], token);
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
    m.doc() = "llama2py C++ CPU kernels (OpenMP) and the Model used by llama2py.backends.cpu";
#if defined(__AVX2__) && defined(__FMA__)
    m.attr("simd") = "avx2+fma";
#else
    m.attr("simd") = "generic";
#endif
    m.def("max_threads", []() { return omp_get_max_threads(); }, "OpenMP's default thread count");
    m.def("matmul", &k_matmul, py::arg("out"), py::arg("x"), py::arg("w"),
          "out (d,) or (rows, d) = x (n,) or (rows, n) @ w (d, n).T");
    m.def("rmsnorm", &k_rmsnorm, py::arg("out"), py::arg("x"), py::arg("w"),
          "out = w * x / sqrt(mean(x^2) + 1e-5) per row");
    m.def("rope", &k_rope, py::arg("x"), py::arg("positions"), py::arg("head_size"),
          "rotate x (rows, n_heads*head_size) in place, row r at positions[r]");
    m.def("attention", &k_attention, py::arg("out"), py::arg("q"), py::arg("k_cache"), py::arg("v_cache"),
          py::arg("slots"), py::arg("positions"), py::arg("n_heads"), py::arg("n_kv_heads"),
          "causal GQA attention of q rows over cache slot slots[r], positions 0..positions[r]");
    m.def("swiglu", &k_swiglu, py::arg("h"), py::arg("g"), "h = silu(h) * g in place");
    m.def("softmax", &k_softmax, py::arg("out"), py::arg("x"));
    m.def("argmax", &k_argmax, py::arg("x"));
    m.def("sample", &k_sample, py::arg("logits"), py::arg("temperature"), py::arg("top_p"), py::arg("state"));
    m.def("rng_u32", &k_rng_u32, py::arg("out"), py::arg("state"));
    m.def("log_softmax_at", &k_log_softmax_at, py::arg("x"), py::arg("token"));

    py::class_<Model>(m, "Model")
        .def(py::init<int, int, int, int, int, int, int, int, int, py::array, py::array, py::array, py::array,
                      py::array, py::array, py::array, py::array, py::array, py::array, py::array, py::array>(),
             py::arg("dim"), py::arg("hidden_dim"), py::arg("n_layers"), py::arg("n_heads"), py::arg("n_kv_heads"),
             py::arg("vocab_size"), py::arg("seq_len"), py::arg("max_batch"), py::arg("threads"),
             py::arg("token_embedding"), py::arg("rms_att"), py::arg("wq"), py::arg("wk"), py::arg("wv"), py::arg("wo"),
             py::arg("rms_ffn"), py::arg("w1"), py::arg("w2"), py::arg("w3"), py::arg("rms_final"), py::arg("wcls"))
        .def("forward", &Model::forward, py::arg("logits"), py::arg("tokens"), py::arg("pos"))
        .def("prefill", &Model::prefill, py::arg("logits"), py::arg("tokens"), py::arg("pos"), py::arg("mode"))
        .def("step", &Model::step, py::arg("next"), py::arg("logprobs"), py::arg("tokens"), py::arg("pos"),
             py::arg("temperature"), py::arg("top_p"), py::arg("forced"))
        .def("profile", &Model::profile, py::arg("times"), py::arg("tokens"), py::arg("pos"))
        .def("set_seeds", &Model::set_seeds, py::arg("seeds"))
        .def("rng_state", &Model::rng_state, py::arg("slot"))
        .def("last_logits", &Model::last_logits)
        .def("logits_view", &Model::logits_view)
        .def_property_readonly("buffer_bytes", &Model::buffer_bytes)
        .def_property_readonly("threads", &Model::threads)
        .def_property_readonly("max_batch", &Model::max_batch);
}
