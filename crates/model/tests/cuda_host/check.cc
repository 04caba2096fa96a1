// Checks the kernels of src/gpu/cuda, compiled for the host with host.h, against direct f64
// computations: RMSNorm, SwiGLU, RoPE, cross-entropy and attention (forward and backward, grouped
// heads, packed rows, queries after a cache, a ragged last tile), in f32 and bf16 storage, on
// fresh random inputs (the seed is printed), with outputs poisoned (NaN) before each launch.
// Prints one line per check and exits non-zero on the first failure.
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

thread_local dim3 threadIdx, blockIdx;
dim3 blockDim, gridDim;
EmuBlock emu_block;

using bf16 = __nv_bfloat16;
using u64 = unsigned long long;
using ll = long long;

#define DECLARE(T, S)                                                                                    \
    extern "C" void rms_norm_fwd_##S(const T*, const T*, T*, float*, int, float);                        \
    extern "C" void rms_norm_bwd_dx_##S(const T*, const T*, const T*, const float*, const T*, T*, int);  \
    extern "C" void rms_norm_bwd_dw_partial_##S(const T*, const T*, const float*, float*, int, int);      \
    extern "C" void rms_norm_bwd_dw_sum_##S(const float*, T*, int, int);                                 \
    extern "C" void swiglu_fwd_##S(const T*, const T*, T*, int, int, ll);                                \
    extern "C" void swiglu_bwd_##S(const T*, const T*, const T*, T*, T*, T*, int, int, ll, ll);          \
    extern "C" void rope_##S(const T*, const T*, const T*, T*, int, int, int, ll, ll, ll, ll, ll, ll, int, float, int); \
    extern "C" void adamw_update_##S(const u64*, int, u64, float, float, float, float, float, float, float); \
    extern "C" void sum_squares_##S(const u64*, int, u64, double*);                                      \
    extern "C" void sum_partials_##S(const double*, u64, double*);                                       \
    extern "C" void cross_entropy_rows_##S(T*, const unsigned*, float*, int, float, const float*, int);  \
    extern "C" void attention_dsum_##S(const T*, const T*, float*, int, int);                            \
    extern "C" void embedding_bwd_##S(const unsigned*, const unsigned*, const unsigned*, const T*, float*, int); \
    extern "C" void attention_fwd_hd64_##S(const T*, const T*, const T*, T*, float*, const unsigned*, int,  \
                                           int, int, int, int, float, ll, ll, ll, ll, ll, ll, ll, ll, ll); \
    extern "C" void attention_bwd_dq_hd64_##S(const T*, const T*, const T*, const T*, const float*,       \
                                              const float*, const unsigned*, T*, int, int, int, int, int, \
                                              float, ll, ll, ll, ll, ll, ll, ll, ll, ll, ll, const T*,    \
                                              const T*);                                                   \
    extern "C" void attention_bwd_dkv_hd64_##S(const T*, const T*, const T*, const T*, const float*,      \
                                               const float*, const unsigned*, T*, T*, int, int, int, int, \
                                               int, float, ll, ll, ll, ll, ll, ll, ll, ll, ll, ll, const T*, \
                                               const T*);                                                   \
    extern "C" void attention_fwd_hd128_##S(const T*, const T*, const T*, T*, float*, const unsigned*, int, \
                                            int, int, int, int, float, ll, ll, ll, ll, ll, ll, ll, ll, ll); \
    extern "C" void attention_bwd_dq_hd128_##S(const T*, const T*, const T*, const T*, const float*,      \
                                               const float*, const unsigned*, T*, int, int, int, int, int, \
                                               float, ll, ll, ll, ll, ll, ll, ll, ll, ll, ll, const T*,   \
                                               const T*);                                                   \
    extern "C" void attention_bwd_dkv_hd128_##S(const T*, const T*, const T*, const T*, const float*,     \
                                                const float*, const unsigned*, T*, T*, int, int, int, int, \
                                                int, float, ll, ll, ll, ll, ll, ll, ll, ll, ll, ll, const T*, \
                                                const T*);
DECLARE(float, f32)
DECLARE(bf16, bf16)
#define DECLARE_TC(HD)                                                                                  \
    extern "C" void attention_fwd_tc_hd##HD##_bf16(const bf16*, const bf16*, const bf16*, bf16*, float*,  \
                                                   const unsigned*, int, int, int, int, int, float, ll, ll, \
                                                   ll, ll, ll, ll, ll, ll, ll);
DECLARE_TC(64)
DECLARE_TC(128)
#define DECLARE_TC_BWD(HD)                                                                              \
    extern "C" void attention_bwd_dq_tc_hd##HD##_bf16(const bf16*, const bf16*, const bf16*, const bf16*, \
                                                      const float*, const float*, const unsigned*, bf16*, int, \
                                                      int, int, int, int, float, ll, ll, ll, ll, ll, ll, ll, ll, \
                                                      ll, ll, const bf16*, const bf16*);                \
    extern "C" void attention_bwd_dkv_tc_hd##HD##_bf16(const bf16*, const bf16*, const bf16*, const bf16*, \
                                                       const float*, const float*, const unsigned*, bf16*, bf16*, \
                                                       int, int, int, int, int, float, ll, ll, ll, ll, ll, ll, ll, \
                                                       ll, ll, ll, const bf16*, const bf16*);
DECLARE_TC_BWD(64)
DECLARE_TC_BWD(128)

// The kernels for a storage type, by their names without the type suffix.
template <typename T> struct Ops;
#define OPS(T, S)                                                                                        \
    template <> struct Ops<T> {                                                                          \
        static constexpr auto rms_norm_fwd = rms_norm_fwd_##S;                                           \
        static constexpr auto rms_norm_bwd_dx = rms_norm_bwd_dx_##S;                                     \
        static constexpr auto rms_norm_bwd_dw_partial = rms_norm_bwd_dw_partial_##S;                     \
        static constexpr auto rms_norm_bwd_dw_sum = rms_norm_bwd_dw_sum_##S;                             \
        static constexpr auto swiglu_fwd = swiglu_fwd_##S;                                               \
        static constexpr auto swiglu_bwd = swiglu_bwd_##S;                                               \
        static constexpr auto rope = rope_##S;                                                           \
        static constexpr auto cross_entropy_rows = cross_entropy_rows_##S;                               \
        static constexpr auto adamw_update = adamw_update_##S;                                           \
        static constexpr auto sum_squares = sum_squares_##S;                                             \
        static constexpr auto sum_partials = sum_partials_##S;                                           \
        static constexpr auto attention_dsum = attention_dsum_##S;                                       \
        static constexpr auto embedding_bwd = embedding_bwd_##S;                                         \
    };
OPS(float, f32)
OPS(bf16, bf16)

// The attention kernels for a storage type and head size.
template <typename T, int HD> struct Kernels;
#define KERNELS(T, S, HD)                                                                                \
    template <> struct Kernels<T, HD> {                                                                  \
        static constexpr auto fwd = attention_fwd_hd##HD##_##S;                                          \
        static constexpr auto dq = attention_bwd_dq_hd##HD##_##S;                                        \
        static constexpr auto dkv = attention_bwd_dkv_hd##HD##_##S;                                      \
    };
KERNELS(float, f32, 64)
KERNELS(float, f32, 128)
KERNELS(bf16, bf16, 64)
KERNELS(bf16, bf16, 128)

// The tensor-core forward for a head size (bf16 only), and its shared memory.
template <int HD> struct TensorCores;
template <> struct TensorCores<64> {
    static constexpr auto fwd = attention_fwd_tc_hd64_bf16;
    static constexpr auto dq = attention_bwd_dq_tc_hd64_bf16;
    static constexpr auto dkv = attention_bwd_dkv_tc_hd64_bf16;
};
template <> struct TensorCores<128> {
    static constexpr auto fwd = attention_fwd_tc_hd128_bf16;
    static constexpr auto dq = attention_bwd_dq_tc_hd128_bf16;
    static constexpr auto dkv = attention_bwd_dkv_tc_hd128_bf16;
};
// Shared memory of the three kernels, as attention_tc.cu lays it out: bf16 tiles of 64 rows,
// row-major (hd + 8 per row): two each of keys and values for the forward and dQ; for dK, dV six
// (keys, values, two each of queries and output gradients) and four rows of f32.
size_t tc_fwd_shared(int hd) { return 2 * 4 * 64 * (hd + 8); }
size_t tc_dq_shared(int hd) { return 2 * 4 * 64 * (hd + 8); }
size_t tc_dkv_shared(int hd) { return 2 * 6 * 64 * (hd + 8) + 4 * 64 * 4; }

static std::mt19937_64 rng;

float val(float x) { return x; }
double val(double x) { return x; }
float val(bf16 x) { return __bfloat162float(x); }
template <typename T> T make(float x);
template <> float make<float>(float x) { return x; }
template <> bf16 make<bf16>(float x) { return __float2bfloat16_rn(x); }

// n values drawn from N(mean, sd), stored as T; `ref` gets the stored (rounded) values.
template <typename T> std::vector<T> randn(size_t n, std::vector<double>& ref, double mean = 0, double sd = 1) {
    std::normal_distribution<double> d(mean, sd);
    std::vector<T> out(n);
    ref.resize(n);
    for (size_t i = 0; i < n; ++i) {
        out[i] = make<T>(float(d(rng)));
        ref[i] = val(out[i]);
    }
    return out;
}

template <typename T> std::vector<T> poisoned(size_t n) { return std::vector<T>(n, make<T>(NAN)); }

static int failures = 0;

// ‖got − want‖ / ‖want‖ under tol, else a failure; NaN (an unwritten element) always fails.
template <typename T> void expect(const char* what, const std::string& kind, const std::vector<T>& got,
                                  const std::vector<double>& want, double tol) {
    double num = 0, den = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        const double g = val(got[i]);
        num += (g - want[i]) * (g - want[i]);
        den += want[i] * want[i];
    }
    const double rel = std::sqrt(num / std::max(den, 1e-300));
    const bool ok = rel < tol;
    std::printf("%-4s %-46s %-5s rel %.2e (bound %.0e)\n", ok ? "ok" : "FAIL", what, kind.c_str(), rel, tol);
    if (ok) return;
    ++failures;
    // The first few elements far from the reference, to tell a wrong index from a wrong value.
    for (size_t i = 0, shown = 0; i < want.size() && shown < 5; ++i) {
        const double g = val(got[i]);
        if (!(std::fabs(g - want[i]) <= 10 * tol * (1 + std::fabs(want[i])))) {
            std::printf("     [%zu] got %g, want %g\n", i, g, want[i]);
            ++shown;
        }
    }
}

template <typename T> double tolerance() { return sizeof(T) == 4 ? 1e-5 : 1e-2; }
template <typename T> std::string kind() { return sizeof(T) == 4 ? "f32" : "bf16"; }

template <typename T> void rms_norm(int rows, int d) {
    std::vector<double> x, w, g;
    auto xs = randn<T>(size_t(rows) * d, x);
    auto ws = randn<T>(d, w, 1.0, 0.2);
    auto gs = randn<T>(size_t(rows) * d, g);
    const float eps = 1e-5f;
    std::vector<double> y(x.size()), dx(x.size()), dw(d, 0.0);
    for (int r = 0; r < rows; ++r) {
        double ss = 0, inner = 0;
        for (int i = 0; i < d; ++i) ss += x[r * d + i] * x[r * d + i];
        const double inv = 1 / std::sqrt(ss / d + eps);
        for (int i = 0; i < d; ++i) {
            y[r * d + i] = x[r * d + i] * inv * w[i];
            inner += x[r * d + i] * w[i] * g[r * d + i];
            dw[i] += g[r * d + i] * x[r * d + i] * inv;
        }
        for (int i = 0; i < d; ++i)
            dx[r * d + i] = inv * (w[i] * g[r * d + i] - x[r * d + i] * inner * inv * inv / d);
    }
    auto ys = poisoned<T>(x.size()), dxs = poisoned<T>(x.size()), dws = poisoned<T>(d);
    std::vector<float> inv(rows, NAN);
    const unsigned threads = std::min(1024u, std::max(32u, unsigned((d + 31) / 32 * 32)));
    const int groups = std::min(128, std::max(1, (rows + 7) / 8));
    std::vector<float> partial(size_t(groups) * d, NAN);
    emu_launch({unsigned(rows)}, {threads}, 0, [&] { Ops<T>::rms_norm_fwd(xs.data(), ws.data(), ys.data(), inv.data(), d, eps); });
    emu_launch({unsigned(rows)}, {threads}, 0, [&] { Ops<T>::rms_norm_bwd_dx(xs.data(), ws.data(), gs.data(), inv.data(), nullptr, dxs.data(), d); });
    // With a residual gradient added in the same pass.
    std::vector<double> res;
    auto ress = randn<T>(x.size(), res);
    std::vector<double> dx_res(dx.size());
    for (size_t i = 0; i < dx.size(); ++i) dx_res[i] = dx[i] + res[i];
    auto dxrs = poisoned<T>(x.size());
    emu_launch({unsigned(rows)}, {threads}, 0, [&] { Ops<T>::rms_norm_bwd_dx(xs.data(), ws.data(), gs.data(), inv.data(), ress.data(), dxrs.data(), d); });
    emu_launch({unsigned((d + 31) / 32), unsigned(groups)}, {32, 8}, 0, [&] { Ops<T>::rms_norm_bwd_dw_partial(xs.data(), gs.data(), inv.data(), partial.data(), rows, d); });
    emu_launch({unsigned((d + 255) / 256)}, {256}, 0, [&] { Ops<T>::rms_norm_bwd_dw_sum(partial.data(), dws.data(), groups, d); });
    const std::string what = "rms_norm " + std::to_string(rows) + "x" + std::to_string(d);
    expect((what + " y").c_str(), kind<T>(), ys, y, tolerance<T>());
    expect((what + " dx").c_str(), kind<T>(), dxs, dx, tolerance<T>());
    expect((what + " dx + residual").c_str(), kind<T>(), dxrs, dx_res, tolerance<T>());
    expect((what + " dw").c_str(), kind<T>(), dws, dw, tolerance<T>());
}

// SwiGLU over `rows` rows of `f`: with `paired`, gate and up side by side in one (rows, 2f) buffer
// (and their gradients likewise), else separate (rows, f) tensors; the backward also writes h.
template <typename T> void swiglu(int rows, int f, bool paired) {
    const size_t n = size_t(rows) * f, width = paired ? 2 * size_t(f) : size_t(f);
    std::vector<double> a, b, g, gu;
    std::vector<T> as, bs, gus;
    if (paired) {
        gus = randn<T>(size_t(rows) * width, gu);
        for (int r = 0; r < rows; ++r)
            for (int c = 0; c < f; ++c) {
                a.push_back(gu[r * width + c]);
                b.push_back(gu[r * width + f + c]);
            }
    } else {
        as = randn<T>(n, a);
        bs = randn<T>(n, b);
    }
    auto gs = randn<T>(n, g);
    std::vector<double> h(n), da(n), db(n);
    for (size_t i = 0; i < n; ++i) {
        const double s = 1 / (1 + std::exp(-a[i]));
        h[i] = a[i] * s * b[i];
        da[i] = g[i] * b[i] * s * (1 + a[i] * (1 - s));
        db[i] = g[i] * a[i] * s;
    }
    const T* pa = paired ? gus.data() : as.data();
    const T* pb = paired ? gus.data() + f : bs.data();
    auto hs = poisoned<T>(n), hs2 = poisoned<T>(n), dgu = poisoned<T>(size_t(rows) * width), dbs = poisoned<T>(n);
    T* pda = dgu.data();
    T* pdb = paired ? dgu.data() + f : dbs.data();
    const unsigned blocks = unsigned(std::min(rows, 3));  // fewer than the rows: blocks stride over them
    const ll ld = ll(width);
    emu_launch({blocks}, {256}, 0, [&] { Ops<T>::swiglu_fwd(pa, pb, hs.data(), rows, f, ld); });
    emu_launch({blocks}, {256}, 0, [&] { Ops<T>::swiglu_bwd(pa, pb, gs.data(), pda, pdb, hs2.data(), rows, f, ld, ld); });
    std::vector<T> das(n), dbs_(n);
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < f; ++c) {
            das[size_t(r) * f + c] = pda[r * width + c];
            dbs_[size_t(r) * f + c] = pdb[r * width + c];
        }
    const std::string what = "swiglu " + std::to_string(rows) + "x" + std::to_string(f) + (paired ? " paired" : "");
    expect((what + " h").c_str(), kind<T>(), hs, h, tolerance<T>());
    expect((what + " da").c_str(), kind<T>(), das, da, tolerance<T>());
    expect((what + " db").c_str(), kind<T>(), dbs_, db, tolerance<T>());
    expect((what + " h from the backward").c_str(), kind<T>(), hs2, h, tolerance<T>());
}

// x stored (B, T, H, hd) and read as (B, H, T, hd) through strides, as the model calls it.
template <typename T> void rope(int b, int t, int h, int hd, int start) {
    const int half = hd / 2, rows = start + t + 3;
    std::vector<double> x, cosr(size_t(rows) * half), sinr(size_t(rows) * half);
    auto xs = randn<T>(size_t(b) * t * h * hd, x);
    std::vector<T> cs(cosr.size()), ss(sinr.size());
    for (int p = 0; p < rows; ++p)
        for (int i = 0; i < half; ++i) {
            const double a = p * std::pow(10000.0, -2.0 * i / hd);
            cs[p * half + i] = make<T>(float(std::cos(a)));
            ss[p * half + i] = make<T>(float(std::sin(a)));
            cosr[p * half + i] = val(cs[p * half + i]);
            sinr[p * half + i] = val(ss[p * half + i]);
        }
    // Expected outputs heads-major (B, H, T, hd) and positions-major (B, T, H, hd), the input's order.
    std::vector<double> fwd[2], back[2];
    for (int order = 0; order < 2; ++order) fwd[order].resize(x.size()), back[order].resize(x.size());
    for (int bi = 0; bi < b; ++bi)
        for (int hi = 0; hi < h; ++hi)
            for (int p = 0; p < t; ++p)
                for (int i = 0; i < half; ++i) {
                    const size_t in = ((size_t(bi) * t + p) * h + hi) * hd;
                    const double c = cosr[(start + p) * half + i], s = sinr[(start + p) * half + i];
                    const double x1 = x[in + i], x2 = x[in + i + half];
                    for (int order = 0; order < 2; ++order) {
                        const size_t out = order == 0 ? ((size_t(bi) * h + hi) * t + p) * hd : in;
                        fwd[order][out + i] = x1 * c - x2 * s;
                        fwd[order][out + i + half] = x2 * c + x1 * s;
                        back[order][out + i] = x1 * c + x2 * s;
                        back[order][out + i + half] = x2 * c - x1 * s;
                    }
                }
    const int rows_total = b * h * t;
    const ll sb = ll(t) * h * hd, sh = hd, st = ll(h) * hd;
    for (int order = 0; order < 2; ++order)
        for (float sign : {1.f, -1.f}) {
            const ll ob = order == 0 ? ll(h) * t * hd : sb, oh = order == 0 ? ll(t) * hd : sh, ot = order == 0 ? hd : st;
            auto ys = poisoned<T>(x.size());
            emu_launch({2}, {32, 8}, 0, [&] {
                Ops<T>::rope(xs.data(), cs.data(), ss.data(), ys.data(), h, t, hd, sb, sh, st, ob, oh, ot, start, sign,
                             rows_total);
            });
            const std::string what = "rope b" + std::to_string(b) + " t" + std::to_string(t) + " h" + std::to_string(h) +
                                     " hd" + std::to_string(hd) + " start " + std::to_string(start) +
                                     (sign > 0 ? " fwd" : " bwd") + (order == 0 ? "" : " positions-major");
            expect(what.c_str(), kind<T>(), ys, sign > 0 ? fwd[order] : back[order], tolerance<T>());
        }
}

// Rows' losses and the gradient in place: of the mean loss (one scale), or with a scale per row
// (upstream gradients of per-token log-probabilities).
template <typename T> void cross_entropy(int n, int v, bool per_row) {
    std::vector<double> x;
    auto xs = randn<T>(size_t(n) * v, x, 0, 3);
    std::vector<unsigned> targets(n);
    std::vector<float> row_scale(n);
    int scored = 0;
    for (int i = 0; i < n; ++i) {
        targets[i] = i % 5 == 2 ? 0xFFFFFFFFu : unsigned(rng() % v);
        scored += targets[i] != 0xFFFFFFFFu;
        row_scale[i] = float(int(rng() % 7) - 3);
    }
    const double scale = per_row ? -1.0 : 1.0 / scored;
    std::vector<double> loss(n), grad(x.size());
    for (int i = 0; i < n; ++i) {
        double m = -INFINITY, s = 0;
        for (int j = 0; j < v; ++j) m = std::max(m, x[size_t(i) * v + j]);
        for (int j = 0; j < v; ++j) s += std::exp(x[size_t(i) * v + j] - m);
        const double lse = m + std::log(s);
        const bool ignored = targets[i] == 0xFFFFFFFFu;
        const double k = per_row ? scale * row_scale[i] : scale;
        loss[i] = ignored ? 0 : lse - x[size_t(i) * v + targets[i]];
        for (int j = 0; j < v; ++j)
            grad[size_t(i) * v + j] = ignored ? 0 : (std::exp(x[size_t(i) * v + j] - lse) - (j == int(targets[i]))) * k;
    }
    std::vector<float> ls(n, NAN);
    const float* rs = per_row ? row_scale.data() : nullptr;
    emu_launch({unsigned(n)}, {1024}, 0, [&] { Ops<T>::cross_entropy_rows(xs.data(), targets.data(), ls.data(), v, float(scale), rs, 1); });
    const std::string what = "cross_entropy n" + std::to_string(n) + " v" + std::to_string(v) + (per_row ? " per row" : "");
    expect((what + " loss").c_str(), kind<T>(), ls, loss, tolerance<T>());
    expect((what + " grad").c_str(), kind<T>(), xs, grad, tolerance<T>());
}

// Attention: q (B, H, T, hd) contiguous; k and v stored (B, S, KV, hd), read as (B, KV, S, hd).
// dQ is expected (B, T, H, hd), dK and dV (B, S, KV, hd): with as many keys as queries all three
// are written side by side into one (B, T, H + 2·KV, hd) buffer, as the model's attention node has
// them, else each into its own.
template <typename T, int HD> void attention(int b, int h, int kv, int t, int s, int start, bool packed) {
    std::vector<double> q, k, v, dout;
    auto qs = randn<T>(size_t(b) * h * t * HD, q);
    auto ks = randn<T>(size_t(b) * s * kv * HD, k);
    auto vs = randn<T>(size_t(b) * s * kv * HD, v);
    auto dos = randn<T>(size_t(b) * t * h * HD, dout);  // (B, T, H, hd)
    std::vector<unsigned> seg;
    if (packed) {
        for (int bi = 0; bi < b; ++bi)
            for (int i = 0; i < t; ++i) seg.push_back(bi == 0 ? (i < 60 ? 0 : i < 61 ? 60 : i < 111 ? 61 : 111) : 0);
    }
    const double scale = 1 / std::sqrt(double(HD));
    const int group = h / kv;
    auto Q = [&](int bi, int hi, int i, int d) { return q[((size_t(bi) * h + hi) * t + i) * HD + d]; };
    auto K = [&](int bi, int g, int j, int d) { return k[((size_t(bi) * s + j) * kv + g) * HD + d]; };
    auto V = [&](int bi, int g, int j, int d) { return v[((size_t(bi) * s + j) * kv + g) * HD + d]; };
    auto DO = [&](int bi, int hi, int i, int d) { return dout[((size_t(bi) * t + i) * h + hi) * HD + d]; };
    auto sees = [&](int bi, int i, int j) { return j <= start + i && (!packed || j >= int(seg[size_t(bi) * t + i])); };
    std::vector<double> o(size_t(b) * t * h * HD), lse(size_t(b) * h * t), dq(q.size(), 0.0), dk(k.size(), 0.0),
        dv(v.size(), 0.0);
    std::vector<float> dsum(size_t(b) * t * h);
    for (int bi = 0; bi < b; ++bi)
        for (int hi = 0; hi < h; ++hi) {
            const int g = hi / group;
            for (int i = 0; i < t; ++i) {
                std::vector<double> p(s, 0.0), dp(s, 0.0);
                double m = -INFINITY, z = 0;
                for (int j = 0; j < s; ++j) {
                    if (!sees(bi, i, j)) continue;
                    double dot = 0;
                    for (int d = 0; d < HD; ++d) dot += Q(bi, hi, i, d) * K(bi, g, j, d);
                    p[j] = dot * scale;
                    m = std::max(m, p[j]);
                }
                for (int j = 0; j < s; ++j) z += sees(bi, i, j) ? std::exp(p[j] - m) : 0;
                lse[(size_t(bi) * h + hi) * t + i] = m + std::log(z);
                for (int j = 0; j < s; ++j) p[j] = sees(bi, i, j) ? std::exp(p[j] - m) / z : 0;
                double dsi = 0;
                for (int d = 0; d < HD; ++d) {
                    double acc = 0;
                    for (int j = 0; j < s; ++j) acc += p[j] * V(bi, g, j, d);
                    o[((size_t(bi) * t + i) * h + hi) * HD + d] = acc;
                    dsi += acc * DO(bi, hi, i, d);
                }
                dsum[(size_t(bi) * t + i) * h + hi] = float(dsi);
                for (int j = 0; j < s; ++j) {
                    for (int d = 0; d < HD; ++d) dp[j] += DO(bi, hi, i, d) * V(bi, g, j, d);
                    const double ds = p[j] * (dp[j] - dsi);
                    for (int d = 0; d < HD; ++d) {
                        dq[((size_t(bi) * t + i) * h + hi) * HD + d] += scale * ds * K(bi, g, j, d);
                        dk[((size_t(bi) * s + j) * kv + g) * HD + d] += scale * ds * Q(bi, hi, i, d);
                        dv[((size_t(bi) * s + j) * kv + g) * HD + d] += p[j] * DO(bi, hi, i, d);
                    }
                }
            }
        }
    auto os = poisoned<T>(o.size()), dqs = poisoned<T>(q.size()), dks = poisoned<T>(k.size()), dvs = poisoned<T>(v.size());
    std::vector<float> lses(lse.size(), NAN);
    const unsigned* sp = packed ? seg.data() : nullptr;
    const ll qb = ll(h) * t * HD, qh = ll(t) * HD, qt = HD, kb = ll(s) * kv * HD, kh = HD, kt = ll(kv) * HD;
    const float sc = float(scale);
    const unsigned qtiles = unsigned((t + 63) / 64), ktiles = unsigned((s + 63) / 64);
    const size_t tile = 64 * (HD + 4) * 4;
    using K_ = Kernels<T, HD>;
    emu_launch({qtiles, unsigned(b * h)}, {256}, 3 * tile, [&] {
        K_::fwd(qs.data(), ks.data(), vs.data(), os.data(), lses.data(), sp, h, kv, t, s, start, sc, qb, qh, qt, kb, kh,
                kt, kb, kh, kt);
    });
    const bool joint = s == t;
    const ll ldq = joint ? ll(h + 2 * kv) * HD : ll(h) * HD, ldkv = joint ? ldq : ll(kv) * HD;
    // Runs a dQ and a dK/dV kernel into the layout above and gathers what they wrote into dq_out,
    // dk_out and dv_out (every element of a joint buffer lands in one of them, so one left unwritten
    // shows as NaN).
    auto backward = [&](auto dq_kernel, auto dkv_kernel, unsigned threads, size_t dq_shared, size_t dkv_shared,
                        std::vector<T>& dq_out, std::vector<T>& dk_out, std::vector<T>& dv_out, const T* cosp = nullptr,
                        const T* sinp = nullptr) {
        auto buf = poisoned<T>(joint ? size_t(b) * t * ldq : 0);
        T* pq = joint ? buf.data() : dq_out.data();
        T* pk = joint ? buf.data() + h * HD : dk_out.data();
        T* pv = joint ? buf.data() + (h + kv) * HD : dv_out.data();
        emu_launch({qtiles, unsigned(b * h)}, {threads}, dq_shared, [&] {
            dq_kernel(qs.data(), ks.data(), vs.data(), dos.data(), lses.data(), dsum.data(), sp, pq, h, kv, t, s, start,
                      sc, qb, qh, qt, kb, kh, kt, kb, kh, kt, ldq, cosp, sinp);
        });
        emu_launch({ktiles, unsigned(b * kv)}, {threads}, dkv_shared, [&] {
            dkv_kernel(qs.data(), ks.data(), vs.data(), dos.data(), lses.data(), dsum.data(), sp, pk, pv, h, kv, t, s,
                       start, sc, qb, qh, qt, kb, kh, kt, kb, kh, kt, ldkv, cosp, sinp);
        });
        if (!joint) return;
        for (size_t row = 0; row < size_t(b) * t; ++row)
            for (int d = 0; d < h * HD; ++d) {
                dq_out[row * h * HD + d] = buf[row * ldq + d];
                if (d < kv * HD) {
                    dk_out[row * kv * HD + d] = buf[row * ldq + h * HD + d];
                    dv_out[row * kv * HD + d] = buf[row * ldq + (h + kv) * HD + d];
                }
            }
    };
    backward(K_::dq, K_::dkv, 256, 4 * tile, 4 * tile + 2 * 64 * 4, dqs, dks, dvs);
    // D = rowsum(dO ⊙ O) from the stored (rounded) outputs, as the backward computes it.
    std::vector<double> dsum_want(dsum.size(), 0.0);
    for (size_t r = 0; r < dsum.size(); ++r)
        for (int d = 0; d < HD; ++d) dsum_want[r] += double(val(dos[r * HD + d])) * val(os[r * HD + d]);
    std::vector<float> dsums(dsum.size(), NAN);
    emu_launch({2}, {256}, 0, [&] { Ops<T>::attention_dsum(dos.data(), os.data(), dsums.data(), int(dsum.size()), HD); });
    std::vector<T> os_tc, dqs_tc, dks_tc, dvs_tc;
    std::vector<float> lses_tc;
    if constexpr (sizeof(T) == 2) {
        os_tc = poisoned<T>(o.size());
        lses_tc.assign(lse.size(), NAN);
        emu_launch({qtiles, unsigned(b * h)}, {128}, tc_fwd_shared(HD), [&] {
            TensorCores<HD>::fwd(qs.data(), ks.data(), vs.data(), os_tc.data(), lses_tc.data(), sp, h, kv, t, s, start,
                                 sc, qb, qh, qt, kb, kh, kt, kb, kh, kt);
        });
        dqs_tc = poisoned<T>(q.size());
        dks_tc = poisoned<T>(k.size());
        dvs_tc = poisoned<T>(v.size());
        backward(TensorCores<HD>::dq, TensorCores<HD>::dkv, 128, tc_dq_shared(HD), tc_dkv_shared(HD), dqs_tc, dks_tc,
                 dvs_tc);
    }
    char what[112];
    std::snprintf(what, sizeof what, "attention b%d h%d kv%d t%d s%d hd%d start %d%s%s", b, h, kv, t, s, HD, start,
                  packed ? " packed" : "", joint ? " (dq, dk, dv in one buffer)" : "");
    const std::string w(what);
    expect((w + " o").c_str(), kind<T>(), os, o, tolerance<T>());
    expect((w + " lse").c_str(), kind<T>(), lses, lse, 1e-5);
    expect((w + " rowsum(dO*O)").c_str(), kind<T>(), dsums, dsum_want, 1e-5);
    expect((w + " dq").c_str(), kind<T>(), dqs, dq, tolerance<T>());
    expect((w + " dk").c_str(), kind<T>(), dks, dk, tolerance<T>());
    expect((w + " dv").c_str(), kind<T>(), dvs, dv, tolerance<T>());
    if constexpr (sizeof(T) == 2) {
        expect((w + " o, tensor cores").c_str(), kind<T>(), os_tc, o, tolerance<T>());
        expect((w + " lse, tensor cores").c_str(), kind<T>(), lses_tc, lse, 1e-4);
        expect((w + " dq, tensor cores").c_str(), kind<T>(), dqs_tc, dq, tolerance<T>());
        expect((w + " dk, tensor cores").c_str(), kind<T>(), dks_tc, dk, tolerance<T>());
        expect((w + " dv, tensor cores").c_str(), kind<T>(), dvs_tc, dv, tolerance<T>());
    }
    if (!joint) return;
    // The same backward given RoPE tables: dQ and dK taken back through the rotation at their
    // positions (queries from `start`, keys from 0), g1·c + g2·s and g2·c − g1·s for each pair of
    // columns (i, i + hd/2), against the reference rotated the same way in f64.
    const int half = HD / 2, positions = std::max(start + t, s);
    std::vector<double> cd, sd;
    auto cos_t = randn<T>(size_t(positions) * half, cd), sin_t = randn<T>(size_t(positions) * half, sd);
    auto unrotated = [&](const std::vector<double>& g, int heads_, int pos0) {
        std::vector<double> out(g.size());
        for (size_t row = 0; row < g.size() / HD; ++row) {
            const size_t pos = size_t(pos0) + row / heads_ % (g.size() / HD / heads_ / b);
            for (int i = 0; i < half; ++i) {
                const double c = val(cos_t[pos * half + i]), sn = val(sin_t[pos * half + i]);
                const double g1 = g[row * HD + i], g2 = g[row * HD + i + half];
                out[row * HD + i] = g1 * c + g2 * sn;
                out[row * HD + i + half] = g2 * c - g1 * sn;
            }
        }
        return out;
    };
    // dq rows are (b, position, head), dk rows (b, key, kv head).
    const auto dq_rot = unrotated(dq, h, start), dk_rot = unrotated(dk, kv, 0);
    auto dqr = poisoned<T>(q.size()), dkr = poisoned<T>(k.size()), dvr = poisoned<T>(v.size());
    backward(K_::dq, K_::dkv, 256, 4 * tile, 4 * tile + 2 * 64 * 4, dqr, dkr, dvr, cos_t.data(), sin_t.data());
    expect((w + " dq through RoPE").c_str(), kind<T>(), dqr, dq_rot, tolerance<T>());
    expect((w + " dk through RoPE").c_str(), kind<T>(), dkr, dk_rot, tolerance<T>());
    expect((w + " dv beside RoPE").c_str(), kind<T>(), dvr, dv, tolerance<T>());
    if constexpr (sizeof(T) == 2) {
        dqr = poisoned<T>(q.size()), dkr = poisoned<T>(k.size()), dvr = poisoned<T>(v.size());
        backward(TensorCores<HD>::dq, TensorCores<HD>::dkv, 128, tc_dq_shared(HD), tc_dkv_shared(HD), dqr, dkr, dvr,
                 cos_t.data(), sin_t.data());
        expect((w + " dq through RoPE, tensor cores").c_str(), kind<T>(), dqr, dq_rot, tolerance<T>());
        expect((w + " dk through RoPE, tensor cores").c_str(), kind<T>(), dkr, dk_rot, tolerance<T>());
    }
}

// Three tensors of different lengths (one under a chunk, one across several, one exactly two) and
// decays, updated in one launch over a table, and their gradients' sum of squares.
template <typename T> void adamw() {
    const size_t sizes[3] = {1000, 9000, 8192};
    const double decays[3] = {0.1, 0.0, 0.1};
    const double scale = 0.7, b1 = 0.9, b2 = 0.95, lr = 3e-3, bc1 = 1 - std::pow(b1, 3), bc2 = 1 - std::pow(b2, 3),
                 eps = 1e-8;
    std::vector<std::vector<float>> ws(3), ms(3), vs(3);
    std::vector<std::vector<T>> gs(3);
    std::vector<std::vector<double>> w2(3), m2(3), v2(3);
    std::vector<u64> table;
    u64 chunk = 0;
    double squares = 0;
    for (int t = 0; t < 3; ++t) {
        const size_t n = sizes[t];
        std::vector<double> w, m, v, g;
        ws[t] = randn<float>(n, w);
        ms[t] = randn<float>(n, m, 0, 0.1);
        vs[t] = randn<float>(n, v, 0, 0.1);
        for (size_t i = 0; i < n; ++i) v[i] = vs[t][i] = vs[t][i] * vs[t][i];  // non-negative
        gs[t] = randn<T>(n, g);
        const double keep = 1 - lr * decays[t];
        w2[t].resize(n), m2[t].resize(n), v2[t].resize(n);
        for (size_t i = 0; i < n; ++i) {
            const double x = g[i] * scale;
            m2[t][i] = b1 * m[i] + (1 - b1) * x;
            v2[t][i] = b2 * v[i] + (1 - b2) * x * x;
            w2[t][i] = w[i] * keep - lr * (m2[t][i] / bc1) / (std::sqrt(v2[t][i] / bc2) + eps);
            squares += g[i] * g[i];
        }
        const float keepf = float(keep);
        uint32_t bits;
        std::memcpy(&bits, &keepf, 4);
        table.insert(table.end(), {u64(ws[t].data()), u64(ms[t].data()), u64(vs[t].data()), u64(gs[t].data()), u64(n),
                                   chunk, u64(bits), 0});
        chunk += (n + 4095) / 4096;
    }
    const unsigned blocks = 2;  // fewer than the chunks: the loops stride over the grid
    std::vector<double> partial(chunk, NAN), total(1, NAN);
    emu_launch({blocks}, {256}, 0, [&] { Ops<T>::adamw_update(table.data(), 3, chunk, float(scale), float(b1), float(b2), float(lr), float(bc1), float(bc2), float(eps)); });
    emu_launch({blocks}, {256}, 0, [&] { Ops<T>::sum_squares(table.data(), 3, chunk, partial.data()); });
    emu_launch({1}, {256}, 0, [&] { Ops<T>::sum_partials(partial.data(), chunk, total.data()); });
    for (int t = 0; t < 3; ++t) {
        const std::string what = "adamw tensor " + std::to_string(t) + " of 3, n" + std::to_string(sizes[t]);
        expect((what + " w").c_str(), kind<T>(), ws[t], w2[t], 1e-5);
        expect((what + " m").c_str(), kind<T>(), ms[t], m2[t], 1e-5);
        expect((what + " v").c_str(), kind<T>(), vs[t], v2[t], 1e-5);
    }
    expect("adamw sum of squares of 3 gradients", kind<T>(), total, {squares}, 1e-12);
}

// The embedding table's gradient from n looked-up rows' gradients: a vocabulary much smaller than
// n, so ids repeat; the rows grouped by id as the host does it (each id's rows in batch order);
// fewer threads than columns, so each takes several; rows of ids absent left as they were (0).
template <typename T> void embedding(int n, int d, int vocab) {
    std::vector<double> g;
    auto gs = randn<T>(size_t(n) * d, g);
    std::vector<unsigned> ids(n);
    std::uniform_int_distribution<unsigned> pick(0, unsigned(vocab - 1));
    for (auto& id : ids) id = pick(rng);
    std::vector<double> want(size_t(vocab) * d, 0.0);
    for (int i = 0; i < n; ++i)
        for (int c = 0; c < d; ++c) want[size_t(ids[i]) * d + c] += g[size_t(i) * d + c];
    std::vector<unsigned> order, starts, present;
    for (int id = 0; id < vocab; ++id) {
        const size_t before = order.size();
        for (int i = 0; i < n; ++i)
            if (ids[i] == unsigned(id)) order.push_back(unsigned(i));
        if (order.size() == before) continue;
        starts.push_back(unsigned(before));
        present.push_back(unsigned(id));
    }
    starts.push_back(unsigned(order.size()));
    std::vector<float> out(want.size(), 0.f);
    emu_launch({unsigned(present.size())}, {8}, 0, [&] {
        Ops<T>::embedding_bwd(order.data(), starts.data(), present.data(), gs.data(), out.data(), d);
    });
    char what[64];
    std::snprintf(what, sizeof what, "embedding backward n%d d%d vocab %d", n, d, vocab);
    expect(what, kind<T>(), out, want, 1e-6);
}

template <typename T> void all() {
    adamw<T>();
    rms_norm<T>(5, 64);
    rms_norm<T>(37, 2144);
    rms_norm<T>(6, 75);  // rows not 16-byte aligned: one element at a time
    swiglu<T>(37, 64, false);
    swiglu<T>(40, 75, false);  // rows not 16-byte aligned: one element at a time
    swiglu<T>(9, 128, true);
    rope<T>(2, 5, 3, 8, 0);
    rope<T>(1, 70, 2, 64, 9);
    cross_entropy<T>(6, 50, false);
    cross_entropy<T>(3, 5000, false);
    cross_entropy<T>(7, 300, true);
    embedding<T>(300, 24, 41);
    embedding<T>(200, 24, 500);  // most ids absent
    attention<T, 64>(1, 4, 2, 130, 130, 0, true);
    attention<T, 64>(1, 2, 2, 5, 150, 145, false);
    attention<T, 64>(1, 2, 1, 192, 192, 0, false);  // whole tiles below the diagonal: no mask
    attention<T, 128>(2, 2, 1, 70, 70, 0, false);
}

int main() {
    const unsigned long long seed = std::random_device{}();
    std::printf("seed %llu\n", seed);
    rng.seed(seed);
    all<float>();
    all<bf16>();
    if (failures) std::printf("%d checks failed\n", failures);
    return failures ? 1 : 0;
}
